"""Console strings. zh-CN is the default; every key has an English twin."""

from __future__ import annotations

STRINGS: dict[str, dict[str, str]] = {
    "zh-CN": {
        "title": "群发 · 活动",
        "campaigns": "活动",
        "name": "名称",
        "channel": "渠道",
        "audience": "受众",
        "state": "状态",
        "planned": "计划人数",
        "sent": "已发送",
        "failed": "失败",
        "unknown": "待核实",
        "platform": "平台回执 (总数/过滤/成功/失败)",
        "progress": "进度",
        "empty": "还没有活动。运行 qunfa demo 或 qunfa campaign create 创建一个。",
        "refresh": "每 5 秒自动刷新",
        "lang": "English",
        "draft": "草稿",
        "planning": "规划中",
        "planned_state": "已规划",
        "sending": "发送中",
        "paused": "已暂停",
        "done": "已完成",
        "failed_state": "失败",
        "cancelled": "已取消",
    },
    "en": {
        "title": "qunfa · campaigns",
        "campaigns": "Campaigns",
        "name": "Name",
        "channel": "Channel",
        "audience": "Audience",
        "state": "State",
        "planned": "Planned",
        "sent": "Sent",
        "failed": "Failed",
        "unknown": "Unknown",
        "platform": "Platform report (total/filter/sent/error)",
        "progress": "Progress",
        "empty": "No campaigns yet. Run qunfa demo or qunfa campaign create.",
        "refresh": "Refreshes every 5 s",
        "lang": "中文",
        "draft": "draft",
        "planning": "planning",
        "planned_state": "planned",
        "sending": "sending",
        "paused": "paused",
        "done": "done",
        "failed_state": "failed",
        "cancelled": "cancelled",
    },
}
STATE_KEY = {"planned": "planned_state", "failed": "failed_state"}


def strings(lang: str | None) -> tuple[str, dict[str, str]]:
    code = "en" if (lang or "").lower().startswith("en") else "zh-CN"
    return code, STRINGS[code]
