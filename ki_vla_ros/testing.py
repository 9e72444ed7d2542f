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

"""Helpers for tests and benchmarks that run real nodes over real DDS in one process.

Why: every ROS test needs the same careful lifecycle (a private rclpy.Context so tests never share global
state, an executor spinning in a background thread, bounded waits, and teardown that always destroys
nodes and shuts the context down so a failing test cannot hang the suite).
"""
from __future__ import annotations

import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import rclpy
from rclpy.context import Context
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node


class RosHarness:
    """A private context plus a background executor; add nodes, wait for conditions, tear down."""

    def __init__(self, domain_id: int | None = None) -> None:
        self.context = Context()
        rclpy.init(context=self.context, domain_id=domain_id)
        # Single-threaded on purpose: rclpy's MultiThreadedExecutor driven by spin_once delivered timers at
        # a few Hz instead of 50 on this project's 2-core CI; node logic that must not block (inference)
        # runs in the node's own thread anyway.
        self.executor = SingleThreadedExecutor(context=self.context)
        self.nodes: list[Node] = []
        self.errors: list[BaseException] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        while not self._stop.is_set() and self.context.ok():
            try:
                self.executor.spin_once(timeout_sec=0.05)
            except ExternalShutdownException:  # a node ended the context (one-shot nodes do, as under run_node)
                return
            except Exception as exc:  # a callback raised: record it (tests assert none did) and go on
                if not self._stop.is_set():
                    self.errors.append(exc)
                    traceback.print_exc()

    def add(self, node: Node) -> Node:
        self.nodes.append(node)
        self.executor.add_node(node)
        return node

    def node(self, name: str, **kwargs: Any) -> Node:
        """A plain helper node in this context (publishers/subscriptions made by the test)."""
        return self.add(Node(name, context=self.context, **kwargs))

    def close(self) -> None:
        """Stop spinning first, then let in-flight callbacks finish, then destroy nodes and the context."""
        self._stop.set()
        self._thread.join(timeout=5.0)
        self.executor.shutdown(timeout_sec=5.0)
        for n in self.nodes:
            try:
                n.destroy_node()
            except Exception:
                pass
        self.context.try_shutdown()


@contextmanager
def ros_harness(domain_id: int | None = None) -> Iterator[RosHarness]:
    """A RosHarness that is always closed; raises at exit if any callback raised (nodes must not).

    `domain_id` isolates a test whose other process inspects the whole graph: participants of earlier tests in this
    process outlive their shut-down contexts for a while, and a graph tool run then saw their nodes and counted every
    message twice (measured: 100 Hz on a 50 Hz topic with one publisher)."""
    h = RosHarness(domain_id)
    try:
        yield h
    finally:
        h.close()
    if h.errors:
        raise AssertionError(f"{len(h.errors)} callback(s) raised, first: {h.errors[0]!r}")


def wait_for(predicate: Callable[[], bool], timeout: float, period: float = 0.01) -> bool:
    """Poll `predicate` until true or `timeout` seconds pass; returns the last result (never blocks longer)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(period)
    return bool(predicate())


class Collector:
    """Subscribes to a topic and keeps (receive monotonic time, message) pairs, thread-safely."""

    def __init__(self, node: Node, msg_type: Any, topic: str, qos: Any) -> None:
        self.items: list[tuple[float, Any]] = []
        self._lock = threading.Lock()
        self.sub = node.create_subscription(msg_type, topic, self._cb, qos)

    def _cb(self, msg: Any) -> None:
        with self._lock:
            self.items.append((time.monotonic(), msg))

    @property
    def msgs(self) -> list[Any]:
        with self._lock:
            return [m for _, m in self.items]

    def clear(self) -> None:
        with self._lock:
            self.items.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self.items)
