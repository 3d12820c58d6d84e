"""Personal data in free text masked before it is stored.

Message events keep the text a person sent (``said()`` searches it; docs/behaviour.md), and
people write their phone number, e-mail address or ID card number into chats ("我的手机是
138 0013 8000"). Phones, e-mails and platform ids are encrypted at rest everywhere else
(docs/people.md, "PII at rest"); free text cannot be, and still be searched by SQL, so what
identifies a person is masked instead:

* an e-mail address becomes ``[e-mail]``;
* a run of 7 or more digits (any script: full-width ``１３８…`` too), with at most one space,
  dash or dot between two digits and an optional ``+`` before, becomes ``[number]``: mobile
  and landline numbers in every spelling, ID card numbers (with their final ``X``), bank
  cards. Shorter numbers (amounts, quantities, times, years) are kept.

Masking is idempotent and changes nothing else. A segment on a masked number
(``said("13800138000", 7d)``) matches nothing, as it should: qunfa does not keep it.
"""

from __future__ import annotations

import re

EMAIL = "[e-mail]"
NUMBER = "[number]"

_EMAIL = re.compile(r"[\w.%+\-]+@[\w\-]+(?:\.[\w\-]+)+")
# \d is every Unicode decimal digit (full-width included); a separator is one space
# (ASCII or ideographic), dash or dot between two digits.
_NUMBER = re.compile(r"(?<!\d)\+?\d(?:[ \u3000\-.]?\d){6,}(?:[Xx](?!\w))?(?!\d)")


def redact(text: str) -> str:
    """``text`` with e-mail addresses and long digit runs masked (see the module)."""
    if "@" in text:
        text = _EMAIL.sub(EMAIL, text)
    return _NUMBER.sub(NUMBER, text)
