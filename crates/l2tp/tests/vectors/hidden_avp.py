#!/usr/bin/env python3
"""Independent RFC 2661 section 4.3 AVP hiding, used to make hidden_avp.hex."""
import hashlib
import struct

def hide(attr, secret, rv, value, pad):
    plain = struct.pack(">H", len(value)) + value + pad
    out = b""
    prev = None
    for i in range(0, len(plain), 16):
        if prev is None:
            key = hashlib.md5(struct.pack(">H", attr) + secret + rv).digest()
        else:
            key = hashlib.md5(secret + prev).digest()
        block = bytes(a ^ b for a, b in zip(plain[i:i + 16], key))
        out += block
        prev = block.ljust(16, b"\0")
    return out

print(hide(30, b"s3cret", bytes(range(16)), b"alice@example", b"PADDING").hex(), end="")
