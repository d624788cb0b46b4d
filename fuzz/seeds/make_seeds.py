#!/usr/bin/env python3
"""Writes the small seed corpora in this folder (run from fuzz/).

The record seeds follow `FlowRecord::to_bytes` and `SupportCase::to_bytes`
(src/record.rs, src/support.rs); the fuzz targets check that each decodes.
"""
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))


def put_str(s):
    if s is None:
        return b"\xff"
    b = s.encode()
    return bytes([len(b)]) + b


def flow(account="user-42", phone="+14155550123", state=2, token=True, decoy=False):
    out = b"OR\x01" + bytes([9] * 16)
    if decoy:
        out += b"\x02" + bytes([5] * 16)
        phone = None
    else:
        out += b"\x01" + put_str(account)
    out += put_str(phone)
    out += bytes([state]) + struct.pack(">Q", 7) + struct.pack(">I", 3) + bytes([1] * 32)
    for t in (10, 11, 12, 13):
        out += struct.pack(">Q", t)
    out += struct.pack(">III", 2, 4, 3)
    out += (b"\x01" + bytes([2] * 32)) if token else b"\x00"
    out += struct.pack(">QQ", 14, 15)
    return out


def case(reference=b"ABCD1234", decoy=False, unlocked=True):
    out = b"OC\x01" + reference
    out += (b"\x02" + bytes([5] * 16)) if decoy else (b"\x01" + put_str("user-42"))
    out += bytes([9] * 16) + struct.pack(">QQQ", 100, 200, 300)
    out += (b"\x01" + struct.pack(">Q", 150)) if unlocked else b"\x00"
    return out


SEEDS = {
    "flow_record": {
        "account-verified": flow(),
        "account-code-sent": flow(state=1, token=False),
        "decoy": flow(decoy=True, state=5, token=False),
        "long-account": flow(account="a" * 128, phone="+447911123456"),
    },
    "support_case": {
        "account": case(),
        "decoy-locked": case(b"ZZZZ0000", decoy=True, unlocked=False),
    },
    "code_token": {
        "code6": b"042917",
        "code10": b"0123456789",
        "token": b"0123456789abcdef" * 6,
    },
    "ids": {
        "flow-id": b"6f1c0e2a9b8d4c7e5a3f1b2d4c6e8a0b",
        "reference": b"abcd-1234",
        "reference-o": b"OIL0-1234",
        "account": b"user-1001",
        "state": b"code_sent",
        "locale": b"pt_BR",
    },
    "phone": {
        "us": b"+14155550123",
        "de": b"+4915112345678",
        "short": b"+2901234",
        "ie": b"+35312345678",
    },
}

for target, seeds in SEEDS.items():
    folder = os.path.join(HERE, target)
    os.makedirs(folder, exist_ok=True)
    for name, data in seeds.items():
        with open(os.path.join(folder, "seed-" + name), "wb") as f:
            f.write(data)
print("sample flow for store_rows:", flow().hex())
