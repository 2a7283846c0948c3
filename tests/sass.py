"""Read the element loops of a kernel's SASS (no GPU needed): the figures
that ``tests/cuda_compile.py --sass`` prints and that ``tests/test_cuda_compile.py``
holds against ``tests/cuda_budgets.json``.

A SASS listing (``nvdisasm -c`` of a cubin that ``ptxas`` assembled) is split
into instructions and labels; a *loop* is a branch back to an earlier label,
its body everything from the label to the branch.  The *element loops* are
the innermost loops that access global memory.  For each one this module
counts:

* ``instructions``: SASS instructions in the body (one iteration);
* ``loads`` / ``stores``: global loads (LDG) and stores (STG), and their
  widths in bits (``LDG.E.128`` is 128, ``LDG.E`` 32);
* ``elements``: elements per iteration, the bytes stored by the iteration
  (a loop that writes) or else loaded by it, over the item size;
* ``in_flight``: the loads issued, from the top of the body, before the
  first instruction that reads a register one of them loaded (how many
  requests a thread has outstanding at once).

The *main* loops are the element loops with at least four global loads:
the unrolled bodies of the row passes (the vector path's loops access 16
bytes at a time, the scalar path's 4 or 8).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import List, Optional

_INSTRUCTION = re.compile(r"^\s*/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;")
_LABEL = re.compile(r"^(\.L_x_\d+):")
_TARGET = re.compile(r"`\((\.L_x_\d+)\)")
_REGISTER = re.compile(r"\bR(\d+)(?:\.(64|128))?\b")
_WIDTH = re.compile(r"\.(8|16|32|64|128)\b")


@dataclass
class Instruction:
    address: int
    text: str

    @property
    def opcode(self) -> str:
        body = self.text
        if body.startswith("@"):
            body = body.split(None, 1)[1] if " " in body else body
        return body.split(None, 1)[0]

    @property
    def operands(self) -> str:
        body = self.text
        if body.startswith("@"):
            body = body.split(None, 1)[1] if " " in body else ""
        parts = body.split(None, 1)
        return parts[1] if len(parts) > 1 else ""

    def is_global_load(self) -> bool:
        return self.opcode.startswith("LDG")

    def is_global_store(self) -> bool:
        return self.opcode.startswith("STG")

    def width(self) -> int:
        """Access width in bits of a load or store (32 when unsuffixed)."""
        found = _WIDTH.findall(self.opcode)
        return int(found[-1]) if found else 32

    def destination_registers(self) -> set:
        """Registers written by a load (R4 of ``LDG.E.128 R4, ...`` is R4-R7)."""
        regs = _REGISTER.findall(self.operands.split(",")[0])
        if not regs:
            return set()
        first = int(regs[0][0])
        return {first + k for k in range(max(1, self.width() // 32))}

    def source_registers(self) -> set:
        """Registers read (everything after the first operand, plus the first
        operand of a store, compare or branch, which have no destination)."""
        operands = self.operands.split(",")
        if self.opcode.startswith(("ST", "BRA", "ISETP", "FSETP", "DSETP", "RED", "ATOM")):
            sources = operands
        else:
            sources = operands[1:]
        found = set()
        for text in sources:
            for reg, width in _REGISTER.findall(text):
                n = {"": 1, "64": 2, "128": 4}[width]
                found.update(int(reg) + k for k in range(n))
        return found


@dataclass
class Loop:
    start: int          # index of the first instruction of the body
    end: int            # index of the backward branch
    body: List[Instruction] = field(default_factory=list)

    @property
    def instructions(self) -> int:
        return sum(1 for ins in self.body if ins.opcode != "NOP")

    @property
    def loads(self) -> List[int]:
        return [ins.width() for ins in self.body if ins.is_global_load()]

    @property
    def stores(self) -> List[int]:
        return [ins.width() for ins in self.body if ins.is_global_store()]

    @property
    def spills(self) -> int:
        return sum(1 for ins in self.body if ins.opcode.startswith(("LDL", "STL")))

    def elements(self, itemsize: int) -> float:
        stored = sum(self.stores) // 8
        loaded = sum(self.loads) // 8
        return (stored or loaded) / itemsize

    def per_element(self, itemsize: int) -> float:
        n = self.elements(itemsize)
        return self.instructions / n if n else float("inf")

    @property
    def in_flight(self) -> int:
        loaded: set = set()
        count = 0
        for ins in self.body:
            if ins.source_registers() & loaded:
                break
            if ins.is_global_load():
                count += 1
                loaded |= ins.destination_registers()
        return count


def parse(listing: str) -> tuple[List[Instruction], dict]:
    """(instructions, label -> index of the instruction that follows it)."""
    instructions: List[Instruction] = []
    labels = {}
    for line in listing.splitlines():
        label = _LABEL.match(line.strip())
        if label:
            labels[label.group(1)] = len(instructions)
            continue
        match = _INSTRUCTION.match(line)
        if match:
            instructions.append(Instruction(int(match.group(1), 16), match.group(2)))
    return instructions, labels


def loops(listing: str) -> List[Loop]:
    """Every loop (backward branch) of a listing."""
    instructions, labels = parse(listing)
    found = []
    for index, ins in enumerate(instructions):
        if ins.opcode != "BRA" and not ins.opcode.startswith("BRA"):
            continue
        target = _TARGET.search(ins.text)
        if not target or target.group(1) not in labels:
            continue
        start = labels[target.group(1)]
        if start <= index:
            found.append(Loop(start, index, instructions[start:index + 1]))
    return found


def element_loops(listing: str) -> List[Loop]:
    """The innermost loops that access global memory."""
    all_loops = loops(listing)
    inner = [lp for lp in all_loops
             if not any(o is not lp and lp.start <= o.start and o.end <= lp.end for o in all_loops)]
    return [lp for lp in inner if lp.loads or lp.stores]


def main_loops(listing: str) -> List[Loop]:
    """Element loops with at least four global loads (the unrolled bodies)."""
    return [lp for lp in element_loops(listing) if len(lp.loads) >= 4]


@dataclass
class Summary:
    """The figures of one kernel specialisation (see the module docstring)."""

    main_loops: int
    vector_loops: int
    load_width: int                 # widest global load in a main loop (bits)
    in_flight: int                  # fewest loads in flight over the main loops
    read_per_element: Optional[float]    # cheapest vector loop that only reads
    write_per_element: Optional[float]   # cheapest vector loop that writes
    worst_per_element: Optional[float]   # most expensive main loop
    loop_spills: int                # local-memory accesses inside element loops

    @property
    def fused_per_element(self) -> Optional[float]:
        """A read pass plus a write pass (the fused loss + gradient)."""
        if self.read_per_element is None:
            return None
        return self.read_per_element + (self.write_per_element or 0.0)

    def as_dict(self) -> dict:
        out = dict(self.__dict__)
        out["fused_per_element"] = self.fused_per_element
        return out


def summarize(listing: str, itemsize: int) -> Summary:
    mains = main_loops(listing)
    vector = [lp for lp in mains if max(lp.loads) >= 128]
    reads = [lp.per_element(itemsize) for lp in vector if not lp.stores]
    writes = [lp.per_element(itemsize) for lp in vector if lp.stores]
    return Summary(
        main_loops=len(mains),
        vector_loops=len(vector),
        load_width=max((max(lp.loads) for lp in mains), default=0),
        in_flight=min((lp.in_flight for lp in mains), default=0),
        read_per_element=round(min(reads), 2) if reads else None,
        write_per_element=round(min(writes), 2) if writes else None,
        worst_per_element=round(max(lp.per_element(itemsize) for lp in mains), 2) if mains else None,
        loop_spills=sum(lp.spills for lp in element_loops(listing)),
    )
