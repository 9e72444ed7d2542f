# Copyright 2026 ki_vla_ros maintainers
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.

"""policy_node: processed cameras + joint states + instruction -> action chunks (a managed lifecycle node).

Why lifecycle: loading and warming a VLA takes seconds to minutes; `configure` does it (and fails cleanly
with the reason), `activate` starts inference, `deactivate` stops it without unloading. Without a lifecycle
manager (pip installs, `ki-vla-ros up`) the `autostart` parameter walks the transitions itself.
Why a thread: inference takes tens to hundreds of ms; running it in a subscription callback would block
every other callback (fresh frames, instructions) for that long. The thread always takes the newest inputs.
"""
from __future__ import annotations

import dataclasses
import sys
import threading
import traceback
import time
from typing import TYPE_CHECKING, Any

import numpy as np
from rcl_interfaces.msg import SetParametersResult
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import String
from trajectory_msgs.msg import JointTrajectory

from ki_vla.data.images import ImageDecodeError
from ki_vla.device import resolve_device
from ki_vla.infer.rtc import CommittedPlan
from ki_vla.control.safety import JointMapping
from ki_vla.joints import JOINT_NAMES, NUM_JOINTS, state_sources, state_topic
from ki_vla.paths import require
from ki_vla_ros.config import PolicyNodeConfig
from ki_vla_ros.msgs import JointStateJoiner, chunk_to_trajectory, image_msg_to_rgb, trajectory_to_arrays
from ki_vla.observation import InstructionError, ObservationAssembler, StaleObservation, clean_instruction
from ki_vla_ros.ros_util import (
    CAMERA_OUT_QOS, INSTRUCTION_QOS, JOINT_STATE_IN_QOS, LATCHED_INSTRUCTION_QOS, RELIABLE_QOS,
    Diagnostics, ThrottledLog, declare_config, now_sec, read_config, refuse_unless_unconfigured, run_node, to_sec)
from ki_vla_ros.stats import Counter, RateMeter, Window

if TYPE_CHECKING:  # the engine imports torch: loaded in configure, not at start-up
    from ki_vla.infer.engine import Predictor


# Read once at start-up (read-only): the instruction subscriptions live in every lifecycle state, the diagnostics
# timer, the start-up walk. Everything else is read in each configure (cleanup -> set -> configure), so a new
# checkpoint is `ros2 param set /policy_node model ...` between a cleanup and a configure.
STARTUP_PARAMETERS = ("instruction_topic", "instruction_latched", "default_instruction", "autostart",
                      "diagnostics_period")
CONFIGURE_PARAMETERS = tuple(f.name for f in dataclasses.fields(PolicyNodeConfig) if f.name not in STARTUP_PARAMETERS)


class PolicyNode(LifecycleNode):
    """Runs a KIPolicy on the newest complete, fresh observation and publishes each chunk."""

    stop_timeout = 10.0   # s to wait for the inference thread at deactivate (a forward pass may be running)

    def __init__(self, **kwargs: Any) -> None:
        super().__init__("policy_node", **kwargs)
        self.cfg = declare_config(self, PolicyNodeConfig, on_configure=CONFIGURE_PARAMETERS)
        self.mapping: JointMapping | None = None   # built with the rest in configure
        self._joiner: JointStateJoiner | None = None
        self.state_topics: list[str] = []
        self.log = ThrottledLog(self)
        self.policy: Predictor | None = None
        self.rtc: CommittedPlan | None = None    # real-time chunking (rtc_beta > 0): the executor's plan, the delay
        self.add_on_set_parameters_callback(
            lambda params: refuse_unless_unconfigured(params, CONFIGURE_PARAMETERS, self.policy is not None,
                                                      self.get_name()) or SetParametersResult(successful=True))
        self.assembler: ObservationAssembler | None = None
        self.chunk_pub: Any = None
        self._subs: list[Any] = []
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._wake = threading.Event()
        self.device = ""
        self.chunk_rate = RateMeter(5.0)
        self.infer_ms = Window(200)
        self.obs_age_ms = Window(200)        # observation stamp (oldest image) -> chunk published
        self.refused = Counter()
        self.input_errors = Counter()
        self.instructions = Counter()
        self.diag = Diagnostics(self, self.cfg.diagnostics_period)
        self.diag.add("policy", self._report)
        self._pending_instruction = self.cfg.default_instruction
        self._thread_error = ""   # why the inference thread died (empty while it lives)
        self.create_timer(0.5, self._watch_thread)
        # Instructions are accepted in every lifecycle state (the newest one is used once active). Two
        # subscriptions: a volatile one matches any publisher (`ros2 topic pub` included); a transient-local
        # one also receives the current value from latched publishers (e.g. the sim's episode task) that
        # published before this node came up. A repeated identical text is accepted quietly.
        self.create_subscription(String, self.cfg.instruction_topic, self._on_instruction, INSTRUCTION_QOS)
        if self.cfg.instruction_latched:
            # Volatile publishers see this subscription as QoS-incompatible (a one-line notice on their side);
            # their messages still arrive through the volatile subscription above.
            self.create_subscription(String, self.cfg.instruction_topic, self._on_instruction,
                                     LATCHED_INSTRUCTION_QOS)
        self._last_instruction = ""

    # ---- lifecycle ----------------------------------------------------------------------------------
    def startup(self) -> bool:
        """Configure + activate (what a lifecycle manager would do); True when active."""
        if self.trigger_configure() != TransitionCallbackReturn.SUCCESS:
            return False
        return self.trigger_activate() == TransitionCallbackReturn.SUCCESS

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._teardown()  # a previous configure that failed half-way must not leave subscriptions behind
        try:
            return self._configure()
        except Exception as exc:  # rclpy would swallow it and end in Unconfigured without a word
            self.get_logger().error(f"configure failed: {exc!r}")
            self._teardown()
            return TransitionCallbackReturn.FAILURE

    def _configure(self) -> TransitionCallbackReturn:
        from ki_vla.infer.engine import make_predictor
        from ki_vla.model.policy import KIPolicy

        self.cfg = cfg = read_config(self, PolicyNodeConfig)
        self.mapping = JointMapping.from_lists(cfg.joint_scale, cfg.joint_offset, NUM_JOINTS)
        # The executor's joint_names (ki_vla.joints.RobotLayout): one joint_states topic per namespace.
        self._joiner = JointStateJoiner(state_sources(cfg.joint_names), cfg.max_state_age)
        try:
            if cfg.torch_threads > 0:
                import torch

                torch.set_num_threads(cfg.torch_threads)
            path = require(cfg.model)
            self.device = str(resolve_device(cfg.device))
            if path.is_file():
                self.get_logger().warning(f"model {path} is a YAML config: RANDOM WEIGHTS, actions are noise "
                                          "(tests and benchmarks only)")
            t0 = time.perf_counter()
            reference = KIPolicy.load(path, device=self.device)
            if cfg.noise_scale >= 0:
                reference.set_noise_scale(cfg.noise_scale)
            self.policy = make_predictor(reference, cfg.engine, cfg.engine_fuse, cfg.engine_text_tokens)
            pcfg = self.policy.cfg
            if pcfg.state_dim != NUM_JOINTS:
                raise ValueError(f"model state_dim {pcfg.state_dim} != {NUM_JOINTS} joints of this robot")
            self.policy.warmup()
            self.get_logger().info(
                f"loaded {path} on {self.device} ({self.policy.kind}) "
                f"in {time.perf_counter() - t0:.1f} s (warm): cameras "
                f"{list(pcfg.camera_names)}, image {pcfg.image_size}px, horizon {pcfg.horizon} @ {pcfg.fps:g} Hz")
        except Exception as exc:  # any load failure: report it and stay unconfigured, never crash
            self.get_logger().error(f"configure failed: cannot load model {cfg.model!r}: {exc}")
            self.policy = None
            return TransitionCallbackReturn.FAILURE
        pcfg = self.policy.cfg
        self.assembler = ObservationAssembler(pcfg.camera_names, pcfg.state_dim, cfg.max_image_age, cfg.max_state_age,
                                              cfg.max_future_stamp)
        if self._pending_instruction:
            try:
                self.assembler.set_instruction(clean_instruction(self._pending_instruction, cfg.max_instruction_chars))
            except InstructionError as exc:
                self.get_logger().warning(f"ignoring default_instruction: {exc}")
        self.chunk_pub = self.create_lifecycle_publisher(JointTrajectory, cfg.chunk_topic, RELIABLE_QOS)
        self.rtc = None
        if cfg.rtc_beta > 0:
            if not cfg.plan_topic:
                raise ValueError("rtc_beta > 0 needs plan_topic (the executor's committed plan)")
            self.rtc = CommittedPlan(1.0 / pcfg.fps, pcfg.horizon, cfg.rtc_beta, cfg.rtc_schedule, cfg.rtc_method,
                                     cfg.rtc_delay_window)
            if cfg.rtc_method == "prefix" and pcfg.rtc_max_delay == 0:
                self.get_logger().warning("rtc_method prefix with a model trained without training-time RTC "
                                          "(rtc_max_delay 0): a clean prefix at flow time 0 is an input it never saw")
            self._subs.append(self.create_subscription(JointTrajectory, cfg.plan_topic, self._on_plan, RELIABLE_QOS))
        for name in pcfg.camera_names:
            topic = cfg.camera_topic.format(name=name)
            self._subs.append(self.create_subscription(
                Image, topic, lambda m, n=name: self._on_image(n, m), CAMERA_OUT_QOS))
        self.state_topics = [state_topic(ns, cfg.joint_states_topic) for ns, _, _ in self._joiner.sources]
        self._subs.extend(self.create_subscription(JointState, topic, lambda m, k=k: self._on_state(m, k),
                                                   JOINT_STATE_IN_QOS) for k, topic in enumerate(self.state_topics))
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        if self._thread is not None and self._thread.is_alive():
            # Its join timed out at the last deactivate (a forward pass still running): a second thread beside it
            # would call the same engine concurrently.
            self.get_logger().error("activate refused: the previous inference thread is still running")
            return TransitionCallbackReturn.FAILURE
        self._thread_error = ""
        self._stop.clear()
        self._thread = threading.Thread(target=self._inference_loop, name="inference", daemon=True)
        self._thread.start()
        self.get_logger().info("active: publishing chunks on fresh observations")
        return super().on_activate(state)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_thread()
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_thread()
        self._teardown()
        return TransitionCallbackReturn.SUCCESS

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        """A transition raised: log it, release everything, go back to Unconfigured (rclpy's default is silence)."""
        self.get_logger().error(f"lifecycle error in state {state.label!r}: stopping inference, releasing the model")
        self._stop_thread()
        self._teardown()
        return TransitionCallbackReturn.SUCCESS

    def _teardown(self) -> None:
        for sub in self._subs:
            self.destroy_subscription(sub)
        self._subs = []
        if self.chunk_pub is not None:
            self.destroy_lifecycle_publisher(self.chunk_pub)
            self.chunk_pub = None
        self.policy = None
        self.assembler = None
        self.rtc = None

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_thread()
        return TransitionCallbackReturn.SUCCESS

    def _stop_thread(self) -> None:
        """Stop the inference thread; if it does not end within 10 s it is kept (and activation refused) rather
        than forgotten, so two threads never share the engine."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=self.stop_timeout)
            if self._thread.is_alive():
                self.get_logger().error(f"the inference thread did not stop within {self.stop_timeout:g} s "
                                        "(a forward pass hung?): activation is refused until it ends")
                return
            self._thread = None

    def _watch_thread(self) -> None:
        """Executor-thread watchdog: an inference thread that died while active is an ERROR and deactivates us."""
        if self._thread is None or self._thread.is_alive() or self._stop.is_set():
            return
        self.get_logger().error(f"inference thread died: {self._thread_error or 'unknown'}; deactivating")
        self._thread = None
        self.trigger_deactivate()

    def destroy_node(self) -> None:
        self._stop_thread()
        super().destroy_node()

    # ---- inputs -------------------------------------------------------------------------------------
    def _on_image(self, name: str, msg: Image) -> None:
        if self.assembler is None:
            return
        stamp = to_sec(msg.header.stamp)

        def decode(m: Image = msg) -> Any:
            try:
                return image_msg_to_rgb(m, use_cv_bridge=False)
            except ImageDecodeError as exc:
                return exc  # validate() in the assembler refuses it with this reason
        self.assembler.set_image(name, stamp, decode)
        self._wake.set()

    def _on_state(self, msg: JointState, source: int) -> None:
        if self.assembler is None:
            return
        joined = self._joiner.offer(source, msg, time.monotonic(), self._reject_state)
        if joined is None:   # invalid, or another namespace's joint_states are missing or older than max_state_age
            return
        q, stamp = joined
        if stamp == 0.0:
            stamp = now_sec(self)
        self.assembler.set_state(stamp, self.mapping.from_robot(q))
        self._wake.set()

    def _reject_state(self, source: int, exc: ValueError) -> None:
        self.input_errors.inc("joint_states")
        self.log.warn(f"joint_states{source}", f"ignoring {self.state_topics[source]}: {exc}")

    def _on_plan(self, msg: JointTrajectory) -> None:
        rtc = self.rtc
        if rtc is None:
            return
        try:
            names, times, positions = trajectory_to_arrays(msg)
            if len(times) and list(names) != list(JOINT_NAMES):
                raise ValueError(f"joint names {names} are not the policy's {list(JOINT_NAMES)}")
            if not np.all(np.isfinite(positions)) or (len(times) > 1 and np.any(np.diff(times) <= 0)):
                raise ValueError("non-finite positions or times not increasing")
        except ValueError as exc:
            self.input_errors.inc("plan")
            self.log.warn("plan", f"ignoring the executor's plan on {self.cfg.plan_topic}: {exc}")
            return
        stamp = to_sec(msg.header.stamp)
        spacing = float(np.mean(np.diff(times))) if len(times) > 1 else 0.0
        rtc.set_plan(stamp, stamp + (float(times[0]) if len(times) else 0.0), spacing,
                     positions if len(times) > 1 else None)

    def _on_instruction(self, msg: String) -> None:
        try:
            text = clean_instruction(msg.data, self.cfg.max_instruction_chars)
        except InstructionError as exc:
            self.instructions.inc("rejected")
            self.get_logger().warning(f"rejected instruction: {exc}")
            return
        if text == self._last_instruction:
            return
        self._last_instruction = text
        self.instructions.inc("accepted")
        self._pending_instruction = text
        if self.assembler is not None:
            self.assembler.set_instruction(text)
        self.get_logger().info(f"instruction: {text!r} (used from the next inference)")

    # ---- inference ----------------------------------------------------------------------------------
    def _inference_loop(self) -> None:
        try:
            self._infer_until_stopped()
        except BaseException as exc:  # noqa: BLE001 - recorded for the watchdog and /diagnostics, then the thread ends
            self._thread_error = repr(exc)
            self.get_logger().error(f"inference thread crashed:\n{traceback.format_exc()}")

    def _infer_until_stopped(self) -> None:
        cfg = self.cfg
        last_start = 0.0
        while not self._stop.is_set():
            self._wake.wait(timeout=0.1)
            self._wake.clear()
            if self._stop.is_set():
                break
            if cfg.min_inference_period > 0:
                wait = last_start + cfg.min_inference_period - time.monotonic()
                if wait > 0 and self._stop.wait(wait):
                    break
            assembler, policy = self.assembler, self.policy
            if assembler is None or policy is None:
                continue
            try:
                obs = assembler.assemble(now_sec(self))
            except StaleObservation as exc:
                if exc.reason != "no_new_data":
                    self.refused.inc(exc.reason)
                    self.log.warn(exc.reason, f"not running inference: {exc}")
                continue
            last_start = time.monotonic()
            rtc = self.rtc
            try:
                guide = rtc.guide(obs.stamp) if rtc is not None else None
                chunk = np.asarray(policy.predict(obs, guide=guide), dtype=np.float64)
            except Exception as exc:  # a failing forward pass is reported, and the next one is tried
                self.refused.inc("inference_error")
                self.log.error("inference", f"inference failed: {exc!r}")
                continue
            if cfg.inject_latency_ms > 0 and self._stop.wait(cfg.inject_latency_ms / 1e3):
                break
            self.infer_ms.add((time.monotonic() - last_start) * 1e3)
            expected = (policy.cfg.horizon, NUM_JOINTS)
            if chunk.shape != expected or not np.all(np.isfinite(chunk)):
                self.refused.inc("bad_model_output")
                self.log.error("output", f"model returned {chunk.shape} (expected {expected}) or non-finite values")
                continue
            if self._stop.is_set():
                break
            msg = chunk_to_trajectory(chunk, JOINT_NAMES, obs.stamp, 1.0 / policy.cfg.fps)
            self.chunk_pub.publish(msg)
            now = now_sec(self)
            self.chunk_rate.tick(now)
            self.obs_age_ms.add((now - obs.stamp) * 1e3)
            if rtc is not None:   # the next chunk is guided toward the plan that includes this one: wait for it
                rtc.published(to_sec(msg.header.stamp), now - obs.stamp)
                rtc.wait_for_plan(cfg.rtc_plan_timeout)

    def _report(self) -> tuple[int, str, dict[str, Any]]:
        now = now_sec(self)
        kv: dict[str, Any] = {"model": self.cfg.model, "device": self.device,
                              "state": self._state_machine.current_state[1],
                              "chunk_rate_hz": self.chunk_rate.rate(now), "chunks": self.chunk_rate.total,
                              "instruction": (self.assembler.instruction if self.assembler else None) or "",
                              "refused": self.refused.total()}
        kv.update({f"inference_ms_{k}": v for k, v in self.infer_ms.percentiles().items()})
        kv.update({f"obs_to_chunk_ms_{k}": v for k, v in self.obs_age_ms.percentiles().items()})
        kv.update({f"refused[{k}]": v for k, v in self.refused.counts.items()})
        kv.update({f"instructions[{k}]": v for k, v in self.instructions.counts.items()})
        kv.update({f"input_errors[{k}]": v for k, v in self.input_errors.counts.items()})
        if self.rtc is not None:
            kv.update(rtc_delay_ticks=self.rtc.delays.delay, rtc_guided=self.rtc.guided, rtc_unguided=self.rtc.unguided)
        if self._thread_error:
            return Diagnostics.ERROR, f"inference thread died: {self._thread_error}", kv
        if self.policy is None:
            return Diagnostics.WARN, "not configured (no model loaded)", kv
        if self._thread is None:
            return Diagnostics.OK, "configured, inactive", kv
        if kv["chunk_rate_hz"] == 0.0:
            return Diagnostics.WARN, "active, no chunks in the last 5 s (inputs missing or stale?)", kv
        return Diagnostics.OK, f"{kv['chunk_rate_hz']:.1f} chunks/s", kv


def _autostart(node: PolicyNode) -> None:
    if node.cfg.autostart and not node.startup():
        node.get_logger().error("autostart failed; staying up unconfigured (see the error above)")


def main(args: list[str] | None = None) -> int:
    """Console script `policy_node`."""
    return run_node(PolicyNode, "policy_node", args, after_start=_autostart)


if __name__ == "__main__":
    sys.exit(main())
