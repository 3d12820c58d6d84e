"""Channel registry: the one place a channel key maps to its adapter class."""

from __future__ import annotations

from qunfa.channels.base import Channel
from qunfa.channels.wechat_oa import WechatOA
from qunfa.channels.wechat_template import WechatTemplate

CHANNELS: dict[str, type[Channel]] = {cls.key: cls for cls in (WechatOA, WechatTemplate)}

# Channels that share one platform account (a template message goes out through the same
# Official Account as a mass send), keyed by the channel an account is registered under.
ACCOUNT_CHANNEL = {"wechat_oa": "wechat_oa", "wechat_template": "wechat_oa"}


def channel_class(key: str) -> type[Channel]:
    try:
        return CHANNELS[key]
    except KeyError:
        known = ", ".join(sorted(CHANNELS))
        raise ValueError(f"unknown channel {key!r}; known channels: {known}") from None
