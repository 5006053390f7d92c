"""Fixtures for the real servers the tests run against: the Abiquo simulator, an SMTP inbox
(aiosmtpd), SQLite and PostgreSQL databases, and Debian's Chromium."""

from __future__ import annotations
