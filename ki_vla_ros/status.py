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

"""`ki-vla-ros status`: one look at the running graph (nodes, lifecycle states, topic rates, each node's latest
diagnostics), for pip-only machines without the `ros2` CLI and for users who would otherwise chain `ros2 node list`,
`ros2 lifecycle get` for every node, `ros2 topic hz` for every topic and `ros2 topic echo /diagnostics`.

Rates are counted on raw (undeserialized) messages with a best-effort subscription, which matches reliable and
best-effort publishers alike and costs little even on image topics.
"""
from __future__ import annotations

import importlib
import json
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy

# Infrastructure topics every graph has: their rates say nothing about the robot.
SKIP_TOPICS = ("/parameter_events", "/rosout")
LEVELS = {0: "OK", 1: "WARN", 2: "ERROR", 3: "STALE"}
LIFECYCLE_TIMEOUT = 2.0   # s after the window to wait for get_state answers
PROBE_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=10, reliability=ReliabilityPolicy.BEST_EFFORT)


@dataclass
class TopicStatus:
    name: str
    type: str
    publishers: int
    subscribers: int
    rate_hz: float | None   # None: the message type is not installed here, so it could not be counted


@dataclass
class NodeStatus:
    name: str
    lifecycle: str | None          # None: not a lifecycle node (or its get_state did not answer)
    diagnostics: list[dict[str, str]] = field(default_factory=list)   # {"level", "name", "message"}


@dataclass
class GraphStatus:
    nodes: list[NodeStatus]
    topics: list[TopicStatus]
    window_s: float


def _message_class(type_name: str) -> Any | None:
    """'sensor_msgs/msg/JointState' -> the class, or None when that package is not installed."""
    try:
        pkg, kind, name = type_name.split("/")
        return getattr(importlib.import_module(f"{pkg}.{kind}"), name)
    except (ValueError, ImportError, AttributeError):
        return None


def graph_status(window: float = 2.0, discovery: float = 1.0) -> GraphStatus:
    """Discover for `discovery` s, then count every topic's messages and collect /diagnostics for `window` s."""
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from lifecycle_msgs.srv import GetState
    from rclpy.context import Context
    from rclpy.executors import SingleThreadedExecutor

    if not (window > 0 and discovery >= 0):
        raise ValueError(f"window must be > 0 and discovery >= 0, got {window}, {discovery}")
    ctx = Context()
    rclpy.init(context=ctx)
    try:
        node = rclpy.create_node("ki_vla_status", context=ctx)
        ex = SingleThreadedExecutor(context=ctx)
        ex.add_node(node)

        def spin_for(seconds: float) -> None:
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                ex.spin_once(timeout_sec=0.05)

        spin_for(discovery)
        me = node.get_fully_qualified_name()
        # A set: a node that just went away (or two with one name) is listed twice by discovery.
        names = sorted({f"{ns.rstrip('/')}/{n}" for n, ns in node.get_node_names_and_namespaces()} - {me})
        services = {s for s, _ in node.get_service_names_and_types()}
        counts: dict[str, int] = {}
        topics = []
        for topic, types in sorted(node.get_topic_names_and_types()):
            if topic in SKIP_TOPICS:
                continue
            cls = _message_class(types[0])
            if cls is not None:
                counts[topic] = 0
                node.create_subscription(cls, topic, lambda _m, t=topic: counts.__setitem__(t, counts[t] + 1),
                                         PROBE_QOS, raw=True)
            topics.append((topic, types[0]))
        latest: dict[str, dict[str, str]] = {}

        def on_diagnostics(msg: DiagnosticArray) -> None:
            for s in msg.status:
                latest[s.name] = {"level": LEVELS.get(s.level[0] if isinstance(s.level, bytes) else s.level, "?"),
                                  "name": s.name, "message": s.message}

        node.create_subscription(DiagnosticArray, "/diagnostics", on_diagnostics, 50)
        # Lifecycle states, asked while the counters run.
        futures = {}
        for name in names:
            if f"{name}/get_state" in services:
                client = node.create_client(GetState, f"{name}/get_state")
                futures[name] = client.call_async(GetState.Request())
        t0 = time.monotonic()
        spin_for(window)
        elapsed = time.monotonic() - t0
        # A loaded node may answer get_state after the window: give the answers a little longer (rates are done).
        deadline = time.monotonic() + LIFECYCLE_TIMEOUT
        while not all(f.done() for f in futures.values()) and time.monotonic() < deadline:
            ex.spin_once(timeout_sec=0.05)
        nodes = []
        for name in names:
            f = futures.get(name)
            state = f.result().current_state.label if f is not None and f.done() and f.result() else None
            short = name.rsplit("/", 1)[-1]
            diags = [d for k, d in sorted(latest.items()) if k.split(":", 1)[0].strip() == short]
            nodes.append(NodeStatus(name, state, diags))
        mine = {t: int(t in counts) + int(t == "/diagnostics") for t, _ in topics}   # our own probes
        out = [TopicStatus(t, type_name, node.count_publishers(t), max(0, node.count_subscribers(t) - mine[t]),
                           counts[t] / elapsed if t in counts else None) for t, type_name in topics]
        return GraphStatus(nodes, out, elapsed)
    finally:
        ctx.try_shutdown()


def format_status(st: GraphStatus) -> str:
    if not st.nodes:
        return "no ROS 2 nodes found (is the graph up, on this ROS_DOMAIN_ID and discovery range?)"
    lines = [f"nodes ({len(st.nodes)}):"]
    width = max(len(n.name) for n in st.nodes)
    for n in st.nodes:
        lines.append(f"  {n.name:<{width}}  {n.lifecycle or '-'}")
        lines += [f"      [{d['level']}] {d['name']}: {d['message']}" for d in n.diagnostics]
    lines.append(f"topics (rates over {st.window_s:.1f} s):")
    width = max((len(t.name) for t in st.topics), default=0)
    for t in st.topics:
        rate = "type not installed" if t.rate_hz is None else f"{t.rate_hz:7.1f} Hz"
        lines.append(f"  {t.name:<{width}}  {rate}  {t.publishers} pub / {t.subscribers} sub  {t.type}")
    return "\n".join(lines)


def status_json(st: GraphStatus) -> str:
    return json.dumps(asdict(st), indent=2)
