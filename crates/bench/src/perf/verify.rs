//! Verify mode's block format: every block written starts with its LBA and
//! a tag (run ID and sequence number) and is filled with words derived from
//! both, so a block read back proves where it was written and by which
//! write.

/// Word `j` of a block's fill.
#[inline]
fn word(lba: u64, tag: u64, j: u64) -> u64 {
    (lba ^ tag.rotate_left(17)).wrapping_add(j.wrapping_mul(0x9e37_79b9_7f4a_7c15))
}

/// The tag of write `seq` in run `run`.
pub(crate) fn tag(run: u32, seq: u32) -> u64 {
    (run as u64) << 32 | seq as u64
}

/// Fills `buf` (whole blocks of `block` bytes, the first at `lba`).
pub(crate) fn fill(buf: &mut [u8], lba: u64, block: usize, tag: u64) {
    for (i, b) in buf.chunks_exact_mut(block).enumerate() {
        let l = lba + i as u64;
        for (j, w) in b.chunks_exact_mut(8).enumerate() {
            let v = match j {
                0 => l,
                1 => tag,
                _ => word(l, tag, j as u64),
            };
            w.copy_from_slice(&v.to_le_bytes());
        }
    }
}

/// Checks `buf` against what [`fill`] wrote; the first difference, described.
pub(crate) fn check(buf: &[u8], lba: u64, block: usize, tag: u64) -> Result<u64, String> {
    let mut checked = 0;
    for (i, b) in buf.chunks_exact(block).enumerate() {
        let l = lba + i as u64;
        for (j, w) in b.chunks_exact(8).enumerate() {
            let got = u64::from_le_bytes(w.try_into().unwrap_or([0; 8]));
            let (want, what) = match j {
                0 => (l, "LBA field"),
                1 => (tag, "sequence tag"),
                _ => (word(l, tag, j as u64), "data"),
            };
            if got != want {
                return Err(match j {
                    0 => format!("LBA {l}: block holds the LBA field {got:#x} (expected {l})"),
                    1 => format!(
                        "LBA {l}: sequence tag run {:#x} seq {} (expected run {:#x} seq {})",
                        got >> 32,
                        got as u32,
                        tag >> 32,
                        tag as u32
                    ),
                    _ => format!("LBA {l}: {what} differs at byte {}", j * 8),
                });
            }
        }
        checked += 1;
    }
    Ok(checked)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_block_checks_against_its_own_lba_and_tag_only() {
        let mut buf = vec![0u8; 4 * 512];
        fill(&mut buf, 100, 512, tag(7, 3));
        assert_eq!(check(&buf, 100, 512, tag(7, 3)), Ok(4));
        let e = check(&buf, 101, 512, tag(7, 3)).unwrap_err();
        assert!(
            e.starts_with("LBA 101: block holds the LBA field 0x64"),
            "{e}"
        );
        let e = check(&buf, 100, 512, tag(7, 4)).unwrap_err();
        assert!(e.contains("seq 3 (expected run 0x7 seq 4)"), "{e}");
        buf[2 * 512 + 300] ^= 1;
        let e = check(&buf, 100, 512, tag(7, 3)).unwrap_err();
        assert_eq!(e, "LBA 102: data differs at byte 296");
    }
}
