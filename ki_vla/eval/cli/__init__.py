"""The evaluation subcommands of `ki-vla`, one module each: eval-bag, eval-sim, eval-rollout, learning-curve."""
