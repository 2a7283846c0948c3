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
_LINE = re.compile(r'//## File "([^"]+)", line (\d+)')
_CALL = re.compile(r"\b(row_online|_\w+_row)\(")


@dataclass
class Instruction:
    address: int
    text: str
    line: Optional[tuple] = None   # (file, line) of the kernel source, with line info

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

    def source(self) -> Optional[tuple]:
        """The kernel source line most of the body comes from (line info)."""
        lines = [ins.line for ins in self.body if ins.line]
        return max(set(lines), key=lines.count) if lines else None

    def pass_name(self) -> str:
        """The row pass this loop belongs to: the ``row_online``/``*_row``
        call on (or just above) its source line, else "kernel"."""
        where = self.source()
        if not where:
            return "kernel"
        try:
            with open(where[0]) as fh:
                text = fh.read().splitlines()
        except OSError:
            return "kernel"
        for lineno in range(where[1], max(0, where[1] - 4), -1):
            found = _CALL.search(text[lineno - 1]) if lineno - 1 < len(text) else None
            if found:
                return found.group(1)
        return "kernel"

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
    where = None
    for line in listing.splitlines():
        source = _LINE.search(line)
        if source:
            where = (source.group(1), int(source.group(2)))
            continue
        label = _LABEL.match(line.strip())
        if label:
            labels[label.group(1)] = len(instructions)
            continue
        match = _INSTRUCTION.match(line)
        if match:
            instructions.append(Instruction(int(match.group(1), 16), match.group(2), where))
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


def loop_figures(loop: Loop, itemsize: int) -> dict:
    return {"instructions": loop.instructions, "per_element": round(loop.per_element(itemsize), 2),
            "in_flight": loop.in_flight, "load_width": max(loop.loads, default=0),
            "store_width": max(loop.stores, default=0), "spills": loop.spills}


def summarize(listing: str, itemsize: int) -> dict:
    """Per row pass (see :meth:`Loop.pass_name`) and path ("vector": the loop
    with 128-bit accesses, "scalar": the other main loop), the figures of
    its main loop (the most expensive one, if a pass has several), plus the
    spills inside any element loop."""
    passes: dict = {}
    for loop in main_loops(listing):
        path = "vector" if max(loop.loads) >= 128 else "scalar"
        figures = loop_figures(loop, itemsize)
        slot = passes.setdefault(loop.pass_name(), {})
        if path not in slot or figures["per_element"] > slot[path]["per_element"]:
            slot[path] = figures
    return {"passes": passes,
            "loop_spills": sum(lp.spills for lp in element_loops(listing))}
