//! The cuts of `trim.rs` against a model of a file's bytes: random writes, truncates (down
//! and up) and holes over a file of thousands of extents, with the trim steps between
//! them, read back after each change as exactly the model's bytes, fsck clean.

use std::collections::HashMap;

use meridian_proto::{BlockId, InodeId};

use super::test_regions::*;
use super::trim;

/// Extents of 100 bytes, one every 128 (none merge).
const SPACING: u64 = 128;
const PIECE: u64 = 100;

/// A byte of the file: the number of the block (from 1) in the high half and where in it
/// in the low, or 0 for a hole.
type Byte = u64;

/// A small deterministic generator (xorshift64*), so that a failing seed can be rerun.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

fn extent(offset: u64, len: u64, block: BlockId) -> Extent {
    Extent {
        offset,
        len,
        block,
        block_offset: 0,
        block_len: len as u32,
    }
}

fn commit(r: &mut Region, ino: InodeId, extents: Vec<Extent>) {
    r.run(Op::CommitExtents {
        ino,
        extents,
        size: 0,
        base_version: None,
        creds: root_creds(),
        staged: Vec::new(),
    })
    .unwrap();
}

fn set_attr(r: &mut Region, ino: InodeId, set: SetAttr) {
    r.run(Op::SetAttr {
        ino,
        set,
        creds: root_creds(),
    })
    .unwrap();
}

fn byte(numbers: &HashMap<BlockId, u64>, e: &Extent, i: u64) -> Byte {
    numbers[&e.block] << 32 | (u64::from(e.block_offset) + i)
}

/// The file's bytes as the region reads them.
fn bytes_of(r: &Region, ino: InodeId, numbers: &HashMap<BlockId, u64>) -> Vec<Byte> {
    let (size, extents) = file_extents(r, ino);
    let mut out: Vec<Byte> = vec![0; size as usize];
    for e in extents {
        for i in 0..e.len {
            if let Some(b) = out.get_mut((e.offset + i) as usize) {
                *b = byte(numbers, &e, i);
            }
        }
    }
    out
}

fn write_model(model: &mut Vec<Byte>, numbers: &HashMap<BlockId, u64>, e: &Extent) {
    let end = e.end() as usize;
    if model.len() < end {
        model.resize(end, 0);
    }
    for i in 0..e.len {
        model[(e.offset + i) as usize] = byte(numbers, e, i);
    }
}

/// One run of `ops` random changes from `seed` over a file of `pieces` extents.
fn run(seed: u64, pieces: u64, ops: usize) {
    let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let mut rs = regions(1);
    let r = &mut rs[0];
    let f = file(r, "f");
    let mut model: Vec<Byte> = Vec::new();
    let mut numbers: HashMap<BlockId, u64> = HashMap::new();
    let block = |numbers: &mut HashMap<BlockId, u64>| {
        let n = numbers.len() as u64 + 1;
        let id = BlockId::of(&n.to_be_bytes());
        numbers.insert(id, n);
        id
    };
    let first: Vec<Extent> = (0..pieces)
        .map(|i| extent(i * SPACING, PIECE, block(&mut numbers)))
        .collect();
    for piece in first.chunks(1000) {
        commit(r, f, piece.to_vec());
    }
    for e in &first {
        write_model(&mut model, &numbers, e);
    }
    let span = pieces * SPACING;
    let mut did = Vec::new();
    for step in 0..ops {
        let size = model.len() as u64;
        match rng.below(20) {
            // A commit of one to three extents, each anywhere up to a little past the end
            // or close after the one before (inside one old extent, say).
            0..=7 => {
                let mut extents = Vec::new();
                let mut at = rng.below(span + span / 8);
                for _ in 0..1 + rng.below(3) {
                    let e = extent(at, 1 + rng.below(3 * SPACING), block(&mut numbers));
                    extents.push(e);
                    at = match rng.below(2) {
                        0 => e.end() + rng.below(PIECE),
                        _ => rng.below(span + span / 8),
                    };
                }
                commit(r, f, extents.clone());
                for e in &extents {
                    write_model(&mut model, &numbers, e);
                }
                let shown: Vec<String> = extents
                    .iter()
                    .map(|e| format!("{}+{}", e.offset, e.len))
                    .collect();
                did.push(format!("write {}", shown.join(" ")));
            }
            // A truncate down, to anywhere below the end.
            8..=10 => {
                let to = rng.below(size + 1);
                set_attr(
                    r,
                    f,
                    SetAttr {
                        size: Some(to),
                        ..SetAttr::default()
                    },
                );
                model.truncate(to as usize);
                did.push(format!("truncate to {to}"));
            }
            // A truncate up.
            11 | 12 => {
                let to = size + rng.below(span / 2);
                set_attr(
                    r,
                    f,
                    SetAttr {
                        size: Some(to),
                        ..SetAttr::default()
                    },
                );
                model.resize(to as usize, 0);
                did.push(format!("truncate up to {to}"));
            }
            // A hole somewhere in the file, maybe past its end.
            13..=17 => {
                let at = rng.below(size + 1);
                let len = 1 + rng.below(span / 2);
                r.run(Op::PunchHole {
                    ino: f,
                    offset: at,
                    len,
                    creds: root_creds(),
                })
                .unwrap();
                let end = (at + len).min(size) as usize;
                for b in model.iter_mut().take(end).skip(at as usize) {
                    *b = 0;
                }
                did.push(format!("hole {at}+{len}"));
            }
            // One of the leader's steps.
            _ => {
                r.write(|t| trim::trim_step(t, f)).unwrap();
                did.push("step".into());
            }
        }
        if step % 8 == 7 {
            assert_consistent(r);
        }
        let got = bytes_of(r, f, &numbers);
        if got != model {
            let at = got.iter().zip(&model).position(|(a, b)| a != b);
            panic!(
                "seed {seed}, after step {step} (sizes {} / {}, first difference at {at:?}): {did:?}",
                got.len(),
                model.len()
            );
        }
    }
    assert_consistent(r);
    // The steps to the end leave the bytes as they are, and nothing cut.
    while !r.write(|t| trim::trim_step(t, f)).unwrap() {}
    assert!(
        bytes_of(r, f, &numbers) == model,
        "seed {seed}: after the last steps"
    );
    assert_consistent(r);
}

#[test]
fn cuts_keep_a_files_bytes_as_a_model_of_them_says() {
    for seed in 0..10 {
        run(seed, 4 * trim::INLINE as u64, 40);
    }
}
