"""Content: media file facts, personalisation templates and per-channel lint (pure, no I/O).

``mediafile`` reads a file's type, dimensions and duration from its header bytes;
``templating`` compiles and checks sandboxed Jinja2 templates; ``lint`` turns the platforms'
limits (``rules/*.toml``) and the seeds' advice (``rules/content.toml``) into findings.
"""
