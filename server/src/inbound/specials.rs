//! Which bytes of a 64-byte block a JSON string's body cannot hold as they are: `"`, `\` and the
//! control characters (below 0x20). One bit per byte, so the scanner finds the end of a plain run
//! with `trailing_zeros` instead of looking at bytes, and an escape costs a shift, not a new
//! search: SDP has an `\r\n` escape every ~40 bytes.
//!
//! x86_64 computes the mask with SSE2 (part of every x86_64 CPU, so no runtime detection), 16 bytes
//! per comparison, through `safe_arch`'s safe wrappers; elsewhere a byte loop gives the same bits.
//! A test holds the two together.

/// Bytes per block: one bit each in a `u64`.
pub const BLOCK: usize = 64;

/// The mask of the block at `bytes[start..]`: bit `i` is set when byte `start + i` is `"`, `\` or
/// below 0x20, and for every `i` past the end of `bytes` (so that a search that finds no special
/// byte stops at the end of the frame, not past it).
#[inline]
pub fn block_mask(bytes: &[u8], start: usize) -> u64 {
    match bytes.get(start..start + BLOCK).and_then(|block| block.first_chunk::<BLOCK>()) {
        Some(block) => mask(block),
        None => {
            // The last, partial block: padded with `"`, which counts as special.
            let rest = bytes.get(start..).unwrap_or_default();
            let mut block = [b'"'; BLOCK];
            block[..rest.len()].copy_from_slice(rest);
            mask(&block)
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[inline]
fn mask(block: &[u8; BLOCK]) -> u64 {
    use safe_arch::{
        bitor_m128i, cmp_eq_mask_i8_m128i, load_unaligned_m128i, min_u8_m128i, move_mask_i8_m128i,
        set_splat_i8_m128i,
    };

    let quote = set_splat_i8_m128i(b'"' as i8);
    let backslash = set_splat_i8_m128i(b'\\' as i8);
    let below_space = set_splat_i8_m128i(0x1f);
    let mut bits = 0_u64;
    for (i, lane) in block.chunks_exact(16).enumerate() {
        let bytes = load_unaligned_m128i(lane.try_into().unwrap_or(&[0; 16]));
        // Unsigned `byte <= 0x1f` is `min(byte, 0x1f) == byte` (SSE2 has no unsigned compare).
        let control = cmp_eq_mask_i8_m128i(min_u8_m128i(bytes, below_space), bytes);
        let special = bitor_m128i(
            bitor_m128i(cmp_eq_mask_i8_m128i(bytes, quote), cmp_eq_mask_i8_m128i(bytes, backslash)),
            control,
        );
        bits |= u64::from(move_mask_i8_m128i(special) as u16) << (16 * i);
    }
    bits
}

#[cfg(not(target_arch = "x86_64"))]
#[inline]
fn mask(block: &[u8; BLOCK]) -> u64 {
    portable_mask(block)
}

/// The same mask a byte at a time: the fallback off x86_64, and the oracle of the tests.
#[cfg_attr(target_arch = "x86_64", allow(dead_code))]
fn portable_mask(block: &[u8; BLOCK]) -> u64 {
    block
        .iter()
        .enumerate()
        .fold(0, |bits, (i, &b)| bits | (u64::from(b == b'"' || b == b'\\' || b < 0x20) << i))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Bytes that matter to the mask and their neighbours: the specials, the bytes next to them,
    /// the highest control character and space, DEL, and bytes with the high bit set (UTF-8).
    fn interesting_byte() -> impl Strategy<Value = u8> {
        prop_oneof![
            proptest::sample::select(vec![
                b'"', b'\\', 0, 0x1f, 0x20, b'!', b'#', b'[', b']', 0x7f, 0x80, 0x9f, 0xc3, 0xff
            ]),
            any::<u8>(),
        ]
    }

    proptest! {
        #[test]
        fn the_vector_mask_is_the_byte_loops(block in proptest::collection::vec(interesting_byte(), BLOCK)) {
            let block: [u8; BLOCK] = block.try_into().expect("64 bytes");
            prop_assert_eq!(mask(&block), portable_mask(&block));
        }

        /// A frame shorter than a block, or the last part of one: the bytes past its end count
        /// as special, the others as the byte loop says.
        #[test]
        fn a_partial_block_ends_in_specials(bytes in proptest::collection::vec(interesting_byte(), 0..200), start in 0..200usize) {
            let start = start.min(bytes.len()) / BLOCK * BLOCK;
            let got = block_mask(&bytes, start);
            for i in 0..BLOCK {
                let expected = bytes.get(start + i).is_none_or(|&b| b == b'"' || b == b'\\' || b < 0x20);
                prop_assert_eq!(got >> i & 1 == 1, expected, "bit {} of the block at {}", i, start);
            }
        }
    }

    #[test]
    fn each_special_byte_is_found_in_every_lane() {
        for special in [b'"', b'\\', 0, 1, b'\t', b'\n', b'\r', 0x1f] {
            for at in 0..BLOCK {
                let mut block = [b'a'; BLOCK];
                block[at] = special;
                assert_eq!(mask(&block), 1 << at, "byte {special:#x} at {at}");
            }
        }
        for plain in [b' ', b'a', 0x7f, 0x80, 0xc3, 0xff] {
            assert_eq!(mask(&[plain; BLOCK]), 0, "byte {plain:#x}");
        }
    }
}
