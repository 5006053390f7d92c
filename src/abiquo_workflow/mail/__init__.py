"""Email: `model` (what to write), `render` (approval and outcome messages), `send` (SMTP), `words`
(wording), and `inbox` (a local SMTP server with a page to read it, for the demo and the tests).

Import from the module that owns a name. This package imports nothing itself, so a running connector
never loads the inbox's SMTP server (aiosmtpd).
"""
