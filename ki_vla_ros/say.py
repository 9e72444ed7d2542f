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

"""`ki-vla-ros say "transfer the red cube"`: publish one instruction (pip-only machines have no `ros2 topic pub`).

Published transient-local (latched), so a policy node that starts or re-configures later still gets it, and only
once a subscriber is there: a message sent before discovery finishes would be lost, and the command would have
claimed success.
"""
from __future__ import annotations

import time

from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from std_msgs.msg import String

from ki_vla.observation import InstructionError, clean_instruction

LATCHED = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.RELIABLE,
                     durability=DurabilityPolicy.TRANSIENT_LOCAL)
MAX_CHARS = 512   # policy_node's default max_instruction_chars


def say(text: str, topic: str = "/instruction", wait: float = 5.0, linger: float = 1.0) -> tuple[int, str]:
    """(exit code, message): 0 when a subscriber was there to receive it, 1 when none appeared within `wait`."""
    import rclpy
    from rclpy.context import Context

    try:
        text = clean_instruction(text, MAX_CHARS)
    except InstructionError as exc:
        return 2, f"not sent: {exc}"
    ctx = Context()
    rclpy.init(context=ctx)
    try:
        node = rclpy.create_node("ki_vla_say", context=ctx)
        pub = node.create_publisher(String, topic, LATCHED)
        deadline = time.monotonic() + wait
        while pub.get_subscription_count() == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        subscribers = pub.get_subscription_count()
        pub.publish(String(data=text))
        time.sleep(linger)   # stay up so the reliable, latched sample is delivered (and late joiners get it)
        if subscribers == 0:
            return 1, f"published {text!r} on {topic}, but no subscriber appeared within {wait:g} s (is the graph up?)"
        return 0, f"sent {text!r} on {topic} to {subscribers} subscription(s)"
    finally:
        ctx.try_shutdown()
