"""The web console: server-rendered pages (Jinja2), zh-CN first, English with ?lang=en."""
