//! End-to-end data protection: block metadata and the protection
//! information (PI) that namespaces formatted with it carry in each
//! block's metadata.
//!
//! A namespace's LBA format may give each block `metadata` bytes besides
//! its data, either at the end of each block's data in one buffer
//! (extended LBAs) or in a buffer of their own (the command's metadata
//! pointer). A namespace formatted with protection information keeps a PI
//! tuple in the first or the last bytes of that metadata:
//!
//! | guard | tuple | guard field | application tag | reference tag |
//! |---|---:|---|---|---|
//! | 16-bit | 8 bytes | CRC-16 T10-DIF, bytes 0..2 | bytes 2..4 | 32 bits, bytes 4..8 |
//! | 64-bit | 16 bytes | CRC-64 NVMe, bytes 0..8 | bytes 8..10 | 48 bits, bytes 10..16 |
//!
//! All fields are big-endian. The guard covers the block's data and, when
//! the tuple is at the end of a larger metadata area, the metadata bytes
//! before it. The reference tag of types 1 and 2 counts up by one per
//! block from the command's initial reference tag (type 1: the low bits of
//! the LBA); type 3 has no reference tag to check (controllers refuse
//! the check with Invalid Protection Information). A tuple whose
//! application tag is FFFFh (types 1 and 2), or whose application tag and
//! reference tag are all ones (type 3), is not checked: it is what
//! controllers report for blocks never written.
//!
//! [`BlockFormat::generate`] and [`BlockFormat::verify`] compute and check
//! the tuples in the host's buffers, for commands sent without PRACT.

/// The protection information type of a namespace (DPS bits 2:0).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum PiType {
    /// Type 1: the reference tag is the low bits of the LBA.
    Type1,
    /// Type 2: the reference tag counts from the command's initial
    /// reference tag.
    Type2,
    /// Type 3: the reference tag is the command's in every block and is
    /// not checked.
    Type3,
}

impl PiType {
    /// The type from DPS bits 2:0 (`None` for 0, protection off, and for
    /// reserved values).
    pub const fn from_dps(dps: u8) -> Option<PiType> {
        match dps & 0x7 {
            1 => Some(PiType::Type1),
            2 => Some(PiType::Type2),
            3 => Some(PiType::Type3),
            _ => None,
        }
    }

    /// The DPS bits 2:0 value.
    pub const fn dps(self) -> u8 {
        match self {
            PiType::Type1 => 1,
            PiType::Type2 => 2,
            PiType::Type3 => 3,
        }
    }
}

/// The guard of a protection information format (the NVM command set's
/// extended LBA format, PIF).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Guard {
    /// 16-bit guard, CRC-16 T10-DIF; an 8-byte tuple with a 32-bit
    /// reference tag (PIF 00b).
    Crc16,
    /// 64-bit guard, CRC-64 NVMe; a 16-byte tuple with a 48-bit reference
    /// tag (PIF 10b).
    Crc64,
}

impl Guard {
    /// The guard from the PIF field (`None` for 32-bit guards, which the
    /// driver does not implement, and reserved values).
    pub const fn from_pif(pif: u8) -> Option<Guard> {
        match pif & 0x3 {
            0 => Some(Guard::Crc16),
            2 => Some(Guard::Crc64),
            _ => None,
        }
    }

    /// The PIF value.
    pub const fn pif(self) -> u8 {
        match self {
            Guard::Crc16 => 0,
            Guard::Crc64 => 2,
        }
    }

    /// Bytes of the PI tuple.
    pub const fn tuple_len(self) -> usize {
        match self {
            Guard::Crc16 => 8,
            Guard::Crc64 => 16,
        }
    }

    /// The reference tag's mask (32 or 48 bits).
    pub const fn ref_mask(self) -> u64 {
        match self {
            Guard::Crc16 => 0xffff_ffff,
            Guard::Crc64 => 0xffff_ffff_ffff,
        }
    }
}

/// A namespace's protection information format.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct PiFormat {
    /// The protection information type.
    pub kind: PiType,
    /// The guard (and so the tuple's size).
    pub guard: Guard,
    /// Whether the tuple is in the first bytes of the metadata (DPS bit
    /// 3), else in the last.
    pub first: bool,
}

/// Which fields of the PI tuples a command has checked (PRCHK), or the
/// host checks.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct Checks {
    /// The guard (PRCHK bit 2).
    pub guard: bool,
    /// The application tag, under the mask (PRCHK bit 1).
    pub app: bool,
    /// The reference tag (PRCHK bit 0).
    pub reference: bool,
}

impl Checks {
    /// Every field.
    pub const ALL: Checks = Checks {
        guard: true,
        app: true,
        reference: true,
    };
    /// No field.
    pub const NONE: Checks = Checks {
        guard: false,
        app: false,
        reference: false,
    };

    /// The PRCHK bits (2: guard, 1: application tag, 0: reference tag).
    pub const fn prchk(self) -> u8 {
        (self.guard as u8) << 2 | (self.app as u8) << 1 | self.reference as u8
    }

    /// The checks of PRCHK bits.
    pub const fn from_prchk(bits: u8) -> Checks {
        Checks {
            guard: bits & 4 != 0,
            app: bits & 2 != 0,
            reference: bits & 1 != 0,
        }
    }
}

/// The tags a command carries: the initial reference tag (of its first
/// block), and the expected application tag with its mask.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct Tags {
    /// The first block's reference tag (32 or 48 bits are used).
    pub reference: u64,
    /// The application tag.
    pub app: u16,
    /// The bits of the application tag that are checked.
    pub app_mask: u16,
}

/// Which field of a PI tuple failed its check.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum PiField {
    /// The guard (end-to-end guard check error).
    Guard,
    /// The application tag (end-to-end application tag check error).
    AppTag,
    /// The reference tag (end-to-end reference tag check error).
    RefTag,
}

impl PiField {
    /// The NVMe status code of a failed check (status code type 2h).
    pub const fn status_code(self) -> u8 {
        match self {
            PiField::Guard => 0x82,
            PiField::AppTag => 0x83,
            PiField::RefTag => 0x84,
        }
    }
}

/// A block whose PI tuple failed a check.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct PiMismatch {
    /// The block's index in the buffer.
    pub block: u64,
    /// The field that failed.
    pub field: PiField,
    /// What the tuple holds.
    pub found: u64,
    /// What the check expected.
    pub expected: u64,
}

/// How a namespace's blocks are laid out in host memory: data bytes per
/// block, metadata bytes per block and where they go, and the protection
/// information in them.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct BlockFormat {
    /// Data bytes per block.
    pub data: u32,
    /// Metadata bytes per block (0: none).
    pub metadata: u16,
    /// Whether the metadata follows each block's data in the data buffer
    /// (extended LBAs, FLBAS bit 4), else it has a buffer of its own.
    pub extended: bool,
    /// The protection information, if the namespace is formatted with it.
    pub pi: Option<PiFormat>,
}

impl BlockFormat {
    /// A format of `data`-byte blocks without metadata.
    pub const fn plain(data: u32) -> BlockFormat {
        BlockFormat {
            data,
            metadata: 0,
            extended: false,
            pi: None,
        }
    }

    /// Offset of the PI tuple in a block's metadata.
    pub fn pi_offset(&self) -> usize {
        match self.pi {
            Some(p) if !p.first => (self.metadata as usize).saturating_sub(p.guard.tuple_len()),
            _ => 0,
        }
    }

    /// Whether the metadata is the PI tuple alone: with PRACT, the
    /// controller then moves no metadata at all (it inserts the tuple on
    /// writes and strips it on reads).
    pub fn metadata_is_pi(&self) -> bool {
        self.pi
            .is_some_and(|p| p.guard.tuple_len() == self.metadata as usize)
    }

    /// Bytes per block in the data buffer: the data, and the metadata for
    /// extended LBAs unless `pract` leaves it to the controller.
    pub fn data_stride(&self, pract: bool) -> u64 {
        let meta = self.extended && !(pract && self.metadata_is_pi());
        self.data as u64 + if meta { self.metadata as u64 } else { 0 }
    }

    /// Bytes per block in a separate metadata buffer: 0 for extended LBAs,
    /// and with `pract` when the metadata is the PI tuple alone.
    pub fn metadata_stride(&self, pract: bool) -> u64 {
        if self.extended || (pract && self.metadata_is_pi()) {
            0
        } else {
            self.metadata as u64
        }
    }

    /// Calls `f(data, metadata)` for each of `blocks` blocks laid out as
    /// this format puts them in `data` (and `meta` when separate).
    fn blocks_mut(
        &self,
        data: &mut [u8],
        meta: &mut [u8],
        mut f: impl FnMut(u64, &mut [u8], &mut [u8]),
    ) -> Result<u64, String> {
        let (bs, ms) = (self.data as usize, self.metadata as usize);
        if self.extended {
            let stride = bs + ms;
            if data.len() % stride != 0 || !meta.is_empty() {
                return Err(format!(
                    "an extended-LBA buffer holds whole {stride}-byte blocks and no separate metadata"
                ));
            }
            for (i, b) in data.chunks_exact_mut(stride).enumerate() {
                let (d, m) = b.split_at_mut(bs);
                f(i as u64, d, m);
            }
            Ok((data.len() / stride) as u64)
        } else {
            let blocks = data.len() / bs.max(1);
            if data.len() % bs.max(1) != 0 || meta.len() != blocks * ms {
                return Err(format!(
                    "{} bytes of data and {} of metadata are not whole {bs}-byte blocks with {ms} bytes of metadata each",
                    data.len(),
                    meta.len()
                ));
            }
            for (i, (d, m)) in data
                .chunks_exact_mut(bs)
                .zip(meta.chunks_exact_mut(ms.max(1)))
                .enumerate()
            {
                f(i as u64, d, &mut m[..ms]);
            }
            Ok(blocks as u64)
        }
    }

    /// Writes the PI tuple of every block in the buffers (laid out as
    /// [`data_stride`](Self::data_stride) and
    /// [`metadata_stride`](Self::metadata_stride) say without PRACT), with
    /// the reference tags counting from `tags.reference` (types 1 and 2)
    /// and `tags.app` as the application tag. Returns the number of
    /// blocks. Fails if the namespace has no protection information or
    /// the buffers are not whole blocks.
    pub fn generate(&self, data: &mut [u8], meta: &mut [u8], tags: Tags) -> Result<u64, String> {
        let Some(pi) = self.pi else {
            return Err("the namespace is not formatted with protection information".into());
        };
        let at = self.pi_offset();
        self.blocks_mut(data, meta, |i, d, m| {
            let reference = match pi.kind {
                PiType::Type3 => tags.reference,
                _ => tags.reference.wrapping_add(i),
            };
            let (covered, tuple) = m.split_at_mut(at);
            let tuple = &mut tuple[..pi.guard.tuple_len()];
            write_tuple(
                pi.guard,
                tuple,
                guard_of(pi.guard, d, covered),
                tags.app,
                reference,
            );
        })
    }

    /// Checks the PI tuple of every block in the buffers (laid out as
    /// [`generate`](Self::generate) takes them) for the fields in
    /// `checks`: the guard against the data, the application tag under
    /// the mask, and for types 1 and 2 the reference tag counting from
    /// `tags.reference` (type 3 has none to check). Tuples that turn
    /// checking off (see the module's docs) pass. Returns the first
    /// mismatch, if any.
    pub fn verify(
        &self,
        data: &[u8],
        meta: &[u8],
        checks: Checks,
        tags: Tags,
    ) -> Result<Option<PiMismatch>, String> {
        let Some(pi) = self.pi else {
            return Err("the namespace is not formatted with protection information".into());
        };
        let at = self.pi_offset();
        let (bs, ms) = (self.data as usize, self.metadata as usize);
        let stride = if self.extended { bs + ms } else { bs };
        let blocks = data.len() / stride.max(1);
        let whole = data.len() % stride.max(1) == 0
            && if self.extended {
                meta.is_empty()
            } else {
                meta.len() == blocks * ms
            };
        if !whole {
            return Err(format!(
                "{} bytes of data and {} of metadata are not whole blocks of this format",
                data.len(),
                meta.len()
            ));
        }
        for i in 0..blocks {
            let d = &data[i * stride..i * stride + bs];
            let m = if self.extended {
                &data[i * stride + bs..(i + 1) * stride]
            } else {
                &meta[i * ms..(i + 1) * ms]
            };
            let tuple = &m[at..at + pi.guard.tuple_len()];
            let (guard, app, reference) = read_tuple(pi.guard, tuple);
            if escaped(pi, app, reference) {
                continue;
            }
            let expected_ref = tags.reference.wrapping_add(i as u64) & pi.guard.ref_mask();
            let mismatch = |field, found, expected| {
                Some(PiMismatch {
                    block: i as u64,
                    field,
                    found,
                    expected,
                })
            };
            if checks.guard {
                let want = guard_of(pi.guard, d, &m[..at]);
                if guard != want {
                    return Ok(mismatch(PiField::Guard, guard, want));
                }
            }
            if checks.app && (app ^ tags.app) & tags.app_mask != 0 {
                return Ok(mismatch(
                    PiField::AppTag,
                    app as u64,
                    (tags.app & tags.app_mask) as u64,
                ));
            }
            if checks.reference && pi.kind != PiType::Type3 && reference != expected_ref {
                return Ok(mismatch(PiField::RefTag, reference, expected_ref));
            }
        }
        Ok(None)
    }
}

/// Whether a tuple turns checking off: application tag FFFFh (types 1
/// and 2), and all-ones reference tag too for type 3.
pub fn escaped(pi: PiFormat, app: u16, reference: u64) -> bool {
    app == 0xffff && (pi.kind != PiType::Type3 || reference == pi.guard.ref_mask())
}

/// The guard of a block: its data, then the metadata bytes before the
/// tuple.
pub fn guard_of(guard: Guard, data: &[u8], before_tuple: &[u8]) -> u64 {
    match guard {
        Guard::Crc16 => crc16_t10dif(crc16_t10dif(0, data), before_tuple) as u64,
        Guard::Crc64 => {
            crc64_nvme_finish(crc64_nvme_update(crc64_nvme_update(!0, data), before_tuple))
        }
    }
}

/// Reads a tuple's guard, application tag and reference tag.
pub fn read_tuple(guard: Guard, t: &[u8]) -> (u64, u16, u64) {
    match guard {
        Guard::Crc16 => (
            u16::from_be_bytes([t[0], t[1]]) as u64,
            u16::from_be_bytes([t[2], t[3]]),
            u32::from_be_bytes([t[4], t[5], t[6], t[7]]) as u64,
        ),
        Guard::Crc64 => {
            let mut r = [0u8; 8];
            r[2..].copy_from_slice(&t[10..16]);
            (
                u64::from_be_bytes(t[..8].try_into().expect("8 bytes")),
                u16::from_be_bytes([t[8], t[9]]),
                u64::from_be_bytes(r),
            )
        }
    }
}

/// Writes a tuple (the reference tag truncated to 32 or 48 bits).
pub fn write_tuple(guard: Guard, t: &mut [u8], value: u64, app: u16, reference: u64) {
    match guard {
        Guard::Crc16 => {
            t[..2].copy_from_slice(&(value as u16).to_be_bytes());
            t[2..4].copy_from_slice(&app.to_be_bytes());
            t[4..8].copy_from_slice(&(reference as u32).to_be_bytes());
        }
        Guard::Crc64 => {
            t[..8].copy_from_slice(&value.to_be_bytes());
            t[8..10].copy_from_slice(&app.to_be_bytes());
            t[10..16].copy_from_slice(&reference.to_be_bytes()[2..]);
        }
    }
}

const fn crc16_table() -> [u16; 256] {
    let mut t = [0u16; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = (i as u16) << 8;
        let mut k = 0;
        while k < 8 {
            c = if c & 0x8000 != 0 {
                (c << 1) ^ 0x8bb7
            } else {
                c << 1
            };
            k += 1;
        }
        t[i] = c;
        i += 1;
    }
    t
}

const fn crc64_table() -> [u64; 256] {
    // CRC-64/NVME: polynomial AD93D23594C93659h, reflected.
    let mut t = [0u64; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u64;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                (c >> 1) ^ 0x9a6c_9329_ac4b_c9b5
            } else {
                c >> 1
            };
            k += 1;
        }
        t[i] = c;
        i += 1;
    }
    t
}

static CRC16: [u16; 256] = crc16_table();
static CRC64: [u64; 256] = crc64_table();

/// CRC-16 T10-DIF (polynomial 8BB7h, not reflected, no final XOR) of
/// `data`, continuing from `crc` (0 to start).
pub fn crc16_t10dif(mut crc: u16, data: &[u8]) -> u16 {
    for &b in data {
        crc = (crc << 8) ^ CRC16[((crc >> 8) as u8 ^ b) as usize];
    }
    crc
}

/// The running register of CRC-64 NVMe over `data`, from `crc` (`!0` to
/// start); [`crc64_nvme_finish`] gives the CRC.
pub fn crc64_nvme_update(mut crc: u64, data: &[u8]) -> u64 {
    for &b in data {
        crc = (crc >> 8) ^ CRC64[((crc as u8) ^ b) as usize];
    }
    crc
}

/// The CRC-64 NVMe of a running register.
pub const fn crc64_nvme_finish(crc: u64) -> u64 {
    !crc
}

/// CRC-64 NVMe (the 64-bit guard) of `data`.
pub fn crc64_nvme(data: &[u8]) -> u64 {
    crc64_nvme_finish(crc64_nvme_update(!0, data))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crcs_match_their_check_values() {
        // The catalogued check values over "123456789".
        assert_eq!(crc16_t10dif(0, b"123456789"), 0xd0db);
        assert_eq!(crc64_nvme(b"123456789"), 0xae8b_1486_0a79_9888);
        // Continuing a CRC is the CRC of the concatenation.
        assert_eq!(crc16_t10dif(crc16_t10dif(0, b"1234"), b"56789"), 0xd0db);
        // NVM Command Set specification's 64-bit guard examples: 4 KiB of
        // zeroes, of FFh, and of incrementing bytes.
        assert_eq!(crc64_nvme(&[0u8; 4096]), 0x6482_d367_eb22_b64e);
        assert_eq!(crc64_nvme(&[0xffu8; 4096]), 0xc0dd_ba73_02ec_a3ac);
        let inc: Vec<u8> = (0..4096).map(|i| i as u8).collect();
        assert_eq!(crc64_nvme(&inc), 0x3e72_9f5f_6750_449c);
    }

    fn format(guard: Guard, kind: PiType, metadata: u16, first: bool, ext: bool) -> BlockFormat {
        BlockFormat {
            data: 512,
            metadata,
            extended: ext,
            pi: Some(PiFormat { kind, guard, first }),
        }
    }

    #[test]
    fn generated_tuples_verify_and_corruption_is_found() {
        for guard in [Guard::Crc16, Guard::Crc64] {
            for kind in [PiType::Type1, PiType::Type2, PiType::Type3] {
                for (ms, first) in [(guard.tuple_len() as u16, true), (32, true), (32, false)] {
                    for ext in [false, true] {
                        let f = format(guard, kind, ms, first, ext);
                        let blocks = 4usize;
                        let stride = f.data_stride(false) as usize;
                        let mut data: Vec<u8> =
                            (0..blocks * stride).map(|i| (i * 7) as u8).collect();
                        let mut meta = vec![0x5a; f.metadata_stride(false) as usize * blocks];
                        let tags = Tags {
                            reference: 0x1_0000_0010,
                            app: 0x1234,
                            app_mask: 0xffff,
                        };
                        assert_eq!(f.generate(&mut data, &mut meta, tags), Ok(4));
                        assert_eq!(f.verify(&data, &meta, Checks::ALL, tags), Ok(None));
                        // The reference tag counts up for types 1 and 2.
                        let m = if ext {
                            &data[stride..]
                        } else {
                            &meta[ms as usize..]
                        };
                        let m = if ext { &m[512..] } else { m };
                        let (_, app, r) = read_tuple(guard, &m[f.pi_offset()..]);
                        assert_eq!(app, 0x1234);
                        let base = tags.reference & guard.ref_mask();
                        let want = if kind == PiType::Type3 {
                            base
                        } else {
                            base + 1
                        };
                        assert_eq!(r, want, "{f:?}");
                        // A data byte flipped in block 2: a guard error there.
                        let mut bad = data.clone();
                        bad[2 * stride + 100] ^= 1;
                        let e = f.verify(&bad, &meta, Checks::ALL, tags).unwrap().unwrap();
                        assert_eq!((e.block, e.field), (2, PiField::Guard));
                        // Not checked when the guard check is off.
                        let no_guard = Checks {
                            guard: false,
                            ..Checks::ALL
                        };
                        assert_eq!(f.verify(&bad, &meta, no_guard, tags), Ok(None));
                        // Another expected application tag.
                        let other = Tags {
                            app: 0x4321,
                            ..tags
                        };
                        let e = f.verify(&data, &meta, Checks::ALL, other).unwrap().unwrap();
                        assert_eq!((e.block, e.field), (0, PiField::AppTag));
                        let masked = Tags {
                            app: 0x1200,
                            app_mask: 0xff00,
                            ..tags
                        };
                        assert_eq!(f.verify(&data, &meta, Checks::ALL, masked), Ok(None));
                        // Another initial reference tag: types 1 and 2 fail.
                        let shifted = Tags {
                            reference: tags.reference + 1,
                            ..tags
                        };
                        let r = f.verify(&data, &meta, Checks::ALL, shifted).unwrap();
                        match kind {
                            PiType::Type3 => assert_eq!(r, None),
                            _ => assert_eq!(r.map(|e| e.field), Some(PiField::RefTag)),
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn escape_tags_turn_checks_off() {
        let f = format(Guard::Crc16, PiType::Type1, 8, true, false);
        let data = vec![1u8; 512];
        let mut meta = vec![0u8; 8];
        write_tuple(Guard::Crc16, &mut meta, 0, 0xffff, 77);
        assert_eq!(
            f.verify(&data, &meta, Checks::ALL, Tags::default()),
            Ok(None)
        );
        let f3 = format(Guard::Crc16, PiType::Type3, 8, true, false);
        let e = f3
            .verify(&data, &meta, Checks::ALL, Tags::default())
            .unwrap();
        assert_eq!(e.map(|e| e.field), Some(PiField::Guard));
        write_tuple(Guard::Crc16, &mut meta, 0, 0xffff, 0xffff_ffff);
        assert_eq!(
            f3.verify(&data, &meta, Checks::ALL, Tags::default()),
            Ok(None)
        );
    }

    #[test]
    fn strides_follow_pract_and_the_layout() {
        let sep = format(Guard::Crc16, PiType::Type1, 8, true, false);
        assert_eq!(
            (sep.data_stride(false), sep.metadata_stride(false)),
            (512, 8)
        );
        assert_eq!((sep.data_stride(true), sep.metadata_stride(true)), (512, 0));
        let ext = format(Guard::Crc16, PiType::Type1, 8, true, true);
        assert_eq!(
            (ext.data_stride(false), ext.metadata_stride(false)),
            (520, 0)
        );
        assert_eq!((ext.data_stride(true), ext.metadata_stride(true)), (512, 0));
        let big = format(Guard::Crc64, PiType::Type1, 64, false, true);
        assert_eq!(big.pi_offset(), 48);
        assert_eq!((big.data_stride(true), big.metadata_stride(true)), (576, 0));
        let bad = vec![0u8; 100];
        assert!(sep.verify(&bad, &[], Checks::ALL, Tags::default()).is_err());
    }
}
