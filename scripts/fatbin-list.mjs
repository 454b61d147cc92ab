#!/usr/bin/env node
// Lists the CUDA code a binary embeds, like `cuobjdump --list-elf --list-ptx` (which a machine with
// only nvcc lacks): the .nv_fatbin section of an ELF shared object holds one fatbin per CUDA
// translation unit, each a sequence of entries (a header: kind 1 = PTX, 2 = SASS ELF; the target's
// number at byte 28; flag 0x100000 at byte 40: an arch-specific "a" target). Prints each fatbin's
// targets on one line ("sm_80 sm_90a compute_120"), or with --targets only the targets common to
// all of them, so a target a kernel file lacks shows as missing.
//   node scripts/fatbin-list.mjs FILE [--targets]
import { readFileSync } from 'node:fs';

const [file, opt] = process.argv.slice(2);
if (!file) {
  console.error('usage: node scripts/fatbin-list.mjs FILE [--targets]');
  process.exit(2);
}
const buf = readFileSync(file);
if (buf.readUInt32BE(0) !== 0x7f454c46 || buf[4] !== 2) throw new Error(`${file}: not a 64-bit ELF file`);

// The section headers: e_shoff at 0x28, e_shentsize / e_shnum / e_shstrndx at 0x3a / 0x3c / 0x3e.
const shoff = Number(buf.readBigUInt64LE(0x28));
const [shentsize, shnum, shstrndx] = [buf.readUInt16LE(0x3a), buf.readUInt16LE(0x3c), buf.readUInt16LE(0x3e)];
const section = i => {
  const h = shoff + i * shentsize;
  return {
    name: buf.readUInt32LE(h),
    offset: Number(buf.readBigUInt64LE(h + 0x18)),
    size: Number(buf.readBigUInt64LE(h + 0x20)),
  };
};
const strtab = section(shstrndx);
const nameOf = s => {
  const start = strtab.offset + s.name;
  return buf.toString('latin1', start, buf.indexOf(0, start));
};
const fatbin = Array.from({ length: shnum }, (_, i) => section(i)).find(s => nameOf(s) === '.nv_fatbin');
if (!fatbin) {
  console.error(`${file}: no .nv_fatbin section (no CUDA code)`);
  process.exit(1);
}

const MAGIC = 0xba55ed50;
const lists = [];
for (let off = fatbin.offset, end = fatbin.offset + fatbin.size; off + 16 <= end; ) {
  if (buf.readUInt32LE(off) !== MAGIC) {
    off += 8; // padding between fatbins
    continue;
  }
  const headerSize = buf.readUInt16LE(off + 6);
  const size = Number(buf.readBigUInt64LE(off + 8));
  const targets = [];
  for (let e = off + headerSize; e < off + headerSize + size; ) {
    const kind = buf.readUInt16LE(e);
    const entryHeader = buf.readUInt32LE(e + 4);
    const payload = Number(buf.readBigUInt64LE(e + 8));
    const arch = buf.readUInt32LE(e + 28);
    const specific = (buf.readUInt32LE(e + 40) & 0x100000) !== 0 ? 'a' : '';
    if (kind === 1) targets.push(`compute_${arch}${specific}`);
    else if (kind === 2) targets.push(`sm_${arch}${specific}`);
    else throw new Error(`${file}: fatbin entry of unknown kind ${kind} at byte ${e}`);
    e += entryHeader + payload;
  }
  lists.push([...new Set(targets)].sort());
  off += headerSize + size;
}
if (opt === '--targets') console.log(lists[0].filter(t => lists.every(l => l.includes(t))).join(' '));
else for (const l of lists) console.log(l.join(' '));
