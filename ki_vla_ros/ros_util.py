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

"""Shared ROS wiring: parameters from config dataclasses, QoS profiles, time conversion, /diagnostics.

Why in one place: every node must declare all of its names as parameters, pick QoS that interoperates
with real drivers and ros2_control, and report on /diagnostics; doing it once keeps the nodes thin and
consistent.
"""
from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from builtin_interfaces.msg import Duration, Time
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, SetParametersResult
from rclpy.clock import Clock, ClockType
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import (DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy,
                       qos_profile_sensor_data)

from ki_vla.configs import ConfigError, check_range

T = TypeVar("T")

# Camera input: best effort accepts both reliable and best-effort publishers (a reliable subscription
# would silently get nothing from a best-effort driver); depth 1 because only the newest frame matters.
CAMERA_IN_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.BEST_EFFORT,
                           durability=DurabilityPolicy.VOLATILE)
# Processed frames: the standard sensor-data profile (best effort, keep last 5).
CAMERA_OUT_QOS = qos_profile_sensor_data
# Joint states: best effort subscription so it matches any publisher; a few deep so bursts are not lost.
JOINT_STATE_IN_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=10, reliability=ReliabilityPolicy.BEST_EFFORT,
                                durability=DurabilityPolicy.VOLATILE)
# Chunks and commands: reliable (every chunk counts; ros2_control's JTC subscribes reliable).
RELIABLE_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=10, reliability=ReliabilityPolicy.RELIABLE,
                          durability=DurabilityPolicy.VOLATILE)
# /instruction: exactly what `ros2 topic pub` offers by default (reliable, volatile), so it connects.
INSTRUCTION_QOS = RELIABLE_QOS
# A second /instruction subscription that also gets the last value a latched (transient-local) publisher sent
# before we subscribed; it does not match volatile publishers, which INSTRUCTION_QOS covers.
LATCHED_INSTRUCTION_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.RELIABLE,
                                     durability=DurabilityPolicy.TRANSIENT_LOCAL)


def declare_config(node: Node, cls: type[T], live: tuple[str, ...] = (),
                   on_configure: tuple[str, ...] = ()) -> T:
    """Declare one parameter per field of dataclass `cls` (default = the field default) and return the
    config filled with the node's values (from --params-file, -p overrides, or defaults).

    Parameters are declared with dynamic typing and coerced here, so `-p control_hz:=50` (an integer) or
    `joint_scale: [1, 1, ...]` work as users expect; a value that cannot be coerced raises ValueError naming
    the parameter.

    Three kinds, each said in the parameter's description: `live` fields the node applies at run time (its own
    on-set callback validates them); `on_configure` fields a lifecycle node reads again in each configure (it
    refuses a change unless unconfigured: `refuse_unless_unconfigured`); the rest are read once, so they are
    declared read-only: `ros2 param set /executor_node diagnostics_period 1.0` must fail and say so, not report
    success and change nothing (a safety trap on the node that moves the robot).

    Every `ros2 param set` is checked against the field's type and range when it is made (an on-set callback), so
    dynamic typing accepts what static typing would, plus integers for floats: `ros2 param set /policy_node
    max_image_age abc` is refused at once with the expected type, not at the next configure. Why not rclpy's static
    typing: it refuses `-p control_hz:=50` for a float parameter and cannot declare an empty string array
    (`urdf_joints: []` is inferred as a byte array), both of which our parameters need.
    """
    for f in dataclasses.fields(cls):
        if f.name in live:
            applied = "applied live"
        elif f.name in on_configure:
            applied = "read on configure (change it while unconfigured: cleanup, set, configure)"
        else:
            applied = "read at start-up (restart to change)"
        descriptor = ParameterDescriptor(dynamic_typing=True, read_only=f.name not in live + on_configure,
                                         description=f"{cls.__name__}.{f.name}: {applied}")
        _describe_range(descriptor, f)
        node.declare_parameter(f.name, _default(f), descriptor)
    fields = {f.name: f for f in dataclasses.fields(cls)}

    def check_types(params: list[Parameter]) -> SetParametersResult:
        for p in params:
            f = fields.get(p.name)
            if f is None:
                continue
            try:
                _checked(f, p.value)
            except ValueError as exc:
                return SetParametersResult(successful=False, reason=str(exc))
        return SetParametersResult(successful=True)

    node.add_on_set_parameters_callback(check_types)
    return read_config(node, cls)


def read_config(node: Node, cls: type[T]) -> T:
    """`cls` filled with the node's current (declared) parameter values, coerced and validated field by field
    (ValueError naming the parameter, for a wrong type or a value outside the field's range)."""
    return cls(**{f.name: _checked(f, node.get_parameter(f.name).value) for f in dataclasses.fields(cls)})


def _checked(f: dataclasses.Field, value: Any) -> Any:
    """`value` coerced to field `f`'s type and checked against its range (ValueError naming the parameter)."""
    try:
        return check_range(_coerce(f.name, value, _default(f)), f, f"parameter {f.name!r}")
    except ConfigError as exc:
        raise ValueError(str(exc)) from None


def _describe_range(descriptor: ParameterDescriptor, f: dataclasses.Field) -> None:
    """The field's range (config.between) in the descriptor. Both range kinds where the bounds are whole numbers:
    parameters are dynamically typed (`-p control_hz:=50` is an integer) and rclpy checks the range of the value's
    own type only; read_config checks every value against the range anyway."""
    bounds = f.metadata.get("range")
    if bounds is None:
        return
    lo, hi = bounds
    if isinstance(_default(f), float):
        descriptor.floating_point_range = [FloatingPointRange(from_value=float(lo), to_value=float(hi), step=0.0)]
    if float(lo).is_integer() and float(hi).is_integer():
        descriptor.integer_range = [IntegerRange(from_value=int(lo), to_value=int(hi), step=1)]
    descriptor.additional_constraints = f"in [{lo}, {hi}]"


def refuse_unless_unconfigured(params: list[Parameter], names: tuple[str, ...], configured: bool,
                               node_name: str) -> SetParametersResult | None:
    """The refusal for a change of an `on_configure` parameter while the node is configured, else None.

    Why refuse rather than accept: the value would only take effect at the next configure, so accepting it on a
    node that is commanding would report a change that has not happened (ros2_controllers reads its parameters in
    on_configure the same way)."""
    changed = [p.name for p in params if p.name in names]
    if configured and changed:
        return SetParametersResult(successful=False, reason=(
            f"{', '.join(changed)}: read on configure; deactivate and cleanup /{node_name} first, set it, then "
            "configure (ros2 lifecycle set)"))
    return None


def _default(f: dataclasses.Field) -> Any:
    return f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]


def _coerce(name: str, value: Any, default: Any) -> Any:
    def bad() -> ValueError:
        return ValueError(f"parameter {name!r}: expected {type(default).__name__} like {default!r}, got {value!r}")

    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise bad()
        return value
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad()
        return float(value)
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or float(value) != int(value):
            raise bad()
        return int(value)
    if isinstance(default, str):
        if not isinstance(value, str):
            raise bad()
        return value
    if isinstance(default, list):
        if not (isinstance(value, (list, tuple)) or hasattr(value, "tolist")):
            raise bad()
        items = list(value.tolist() if hasattr(value, "tolist") else value)
        if default and isinstance(default[0], float):
            if not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in items):
                raise bad()
            return [float(x) for x in items]
        if default and isinstance(default[0], str) and not all(isinstance(x, str) for x in items):
            raise bad()
        return items
    return value


def to_sec(stamp: Time) -> float:
    return stamp.sec + stamp.nanosec * 1e-9


def to_time_msg(t: float) -> Time:
    sec = int(t // 1)
    nsec = int(round((t - sec) * 1e9))
    if nsec >= 1_000_000_000:
        sec, nsec = sec + 1, nsec - 1_000_000_000
    return Time(sec=sec, nanosec=nsec)


def to_duration_msg(d: float) -> Duration:
    sec = int(d // 1)
    nsec = int(round((d - sec) * 1e9))
    if nsec >= 1_000_000_000:
        sec, nsec = sec + 1, nsec - 1_000_000_000
    return Duration(sec=sec, nanosec=nsec)


def duration_to_sec(d: Duration) -> float:
    return d.sec + d.nanosec * 1e-9


def now_sec(node: Node) -> float:
    """The node's clock (sim time when use_sim_time is set) in seconds."""
    return node.get_clock().now().nanoseconds * 1e-9


DiagTask = Callable[[], tuple[int, str, dict[str, Any]]]


class Diagnostics:
    """Publishes one DiagnosticStatus per registered task on /diagnostics at a fixed period.

    A task returns (level, message, key/values); level is DiagnosticStatus.OK/WARN/ERROR/STALE. A task that
    raises reports ERROR with the exception text rather than silencing the whole array.
    """

    OK = DiagnosticStatus.OK
    WARN = DiagnosticStatus.WARN
    ERROR = DiagnosticStatus.ERROR
    STALE = DiagnosticStatus.STALE

    def __init__(self, node: Node, period: float = 1.0, hardware_id: str = "ki_vla") -> None:
        self._node = node
        self._hardware_id = hardware_id
        self._tasks: list[tuple[str, DiagTask]] = []
        self._lock = threading.Lock()
        self._pub = node.create_publisher(DiagnosticArray, "/diagnostics", 10)
        # On the steady clock, not the node's: with use_sim_time and no /clock a ROS-time timer never fires, and
        # that silent graph is exactly when a user needs /diagnostics to say why.
        self._timer = node.create_timer(max(period, 0.05), self.publish, clock=Clock(clock_type=ClockType.STEADY_TIME))

    def add(self, name: str, task: DiagTask) -> None:
        with self._lock:
            self._tasks.append((f"{self._node.get_name()}: {name}", task))

    def publish(self) -> None:
        msg = DiagnosticArray()
        msg.header.stamp = self._node.get_clock().now().to_msg()
        with self._lock:
            tasks = list(self._tasks)
        for name, task in tasks:
            try:
                level, text, kv = task()
            except Exception as exc:  # a broken report must not take the other reports down
                level, text, kv = DiagnosticStatus.ERROR, f"diagnostic task failed: {exc!r}", {}
            msg.status.append(DiagnosticStatus(
                level=level if isinstance(level, bytes) else bytes([level]), name=name, message=text,
                hardware_id=self._hardware_id,
                values=[KeyValue(key=str(k), value=_fmt(v)) for k, v in kv.items()]))
        self._pub.publish(msg)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


class ThrottledLog:
    """Log a recurring problem at most once per `period` seconds per key, with a count of suppressed repeats.

    Outside input can be bad at 30 Hz per camera; the first occurrence must be visible, the rest must not
    flood the console.
    """

    def __init__(self, node: Node, period: float = 2.0) -> None:
        self._node = node
        self._period = period
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def warn(self, key: str, text: str) -> None:
        self._emit(key, text, self._node.get_logger().warning)

    def error(self, key: str, text: str) -> None:
        self._emit(key, text, self._node.get_logger().error)

    def _emit(self, key: str, text: str, fn: Callable[[str], Any]) -> None:
        now = time.monotonic()
        if now - self._last.get(key, -1e9) >= self._period:
            n = self._suppressed.pop(key, 0)
            fn(text + (f" ({n} similar suppressed)" if n else ""))
            self._last[key] = now
        else:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1


def run_node(factory: Callable[[], Node], label: str, args: list[str] | None = None,
             after_start: Callable[[Node], None] | None = None,
             exit_code: Callable[[Node], int] | None = None) -> int:
    """A node executable's main: init, build, spin until Ctrl-C / shutdown, clean up.

    A node that finishes its job by itself shuts its context down (`node.context.try_shutdown()`);
    `exit_code(node)` then gives the process's exit status.

    Configuration mistakes (bad parameter value or type, invalid topic name, missing file) end the process
    with one clear line and exit code 2 instead of a traceback, so `ki-vla-ros up` and `ros2 launch` show
    the cause; anything else is a bug and keeps its traceback.
    """
    import sys

    import rclpy
    from rclpy.exceptions import NameValidationException, ParameterException
    from rclpy.executors import ExternalShutdownException

    rclpy.init(args=args if args is not None else sys.argv)
    node: Node | None = None
    code = 0
    try:
        node = factory()
        if after_start is not None:
            after_start(node)
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except (ValueError, FileNotFoundError, ParameterException, NameValidationException) as exc:
        print(f"{label}: configuration error: {exc}", file=sys.stderr)
        code = 2
    finally:
        if node is not None:
            if code == 0 and exit_code is not None:
                code = exit_code(node)
            node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()
    return code
