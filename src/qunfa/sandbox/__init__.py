"""The sandbox: a local server that speaks the platforms' real protocols.

Operators rehearse campaigns on it, the demo and the tests run against it, and channel adapters
point at it by changing one base URL per platform. Platform paths live under a per-platform prefix
(``/wechat/cgi-bin/...`` stands for ``https://api.weixin.qq.com/cgi-bin/...``); the sandbox's own
admin API lives under ``/_sandbox/``. State (accounts, followers, tokens, jobs, the per-recipient
ledger, callbacks, faults, clock offset) is one SQLite file that survives restarts.

Modules: :mod:`.server` (app factory, ``run``, ``EmbeddedSandbox``), :mod:`.state` (SQLite),
:mod:`.admin` (``/_sandbox/*``), :mod:`.faults`, :mod:`.ledger`, :mod:`.callbacks`, and one module
per channel twin (:mod:`.wechat_oa`, :mod:`.wechat_template`). See ``docs/sandbox.md``.
"""
