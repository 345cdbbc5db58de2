//! CRC32C (Castagnoli), the checksum on every record, footer and trailer.
//!
//! With `std`, the `crc32c` crate's hardware implementation (SSE 4.2 / ARMv8 CRC,
//! detected at run time) does the work; without it, the `crc` crate's table-driven
//! implementation of the same polynomial. Both give identical values.

/// CRC32C of `data`.
pub fn crc32c(data: &[u8]) -> u32 {
    crc32c_append(0, data)
}

/// Continues a CRC32C over more data: `crc32c_append(crc32c(a), b) == crc32c(a ++ b)`.
pub fn crc32c_append(crc: u32, data: &[u8]) -> u32 {
    #[cfg(feature = "std")]
    {
        ::crc32c::crc32c_append(crc, data)
    }
    #[cfg(not(feature = "std"))]
    {
        software_append(crc, data)
    }
}

#[cfg_attr(feature = "std", allow(dead_code))] // the no_std path, and the test oracle
fn software_append(crc: u32, data: &[u8]) -> u32 {
    const CASTAGNOLI: crc::Crc<u32, crc::Table<16>> =
        crc::Crc::<u32, crc::Table<16>>::new(&crc::CRC_32_ISCSI);
    // CRC32C pre- and post-inverts its register, so continuing from `crc` starts from
    // `!crc`; the `crc` crate bit-reverses a reflected algorithm's initial value, so it
    // is handed over reversed.
    let mut digest = CASTAGNOLI.digest_with_initial((!crc).reverse_bits());
    digest.update(data);
    digest.finalize()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_vector() {
        assert_eq!(crc32c(b"123456789"), 0xe306_9283);
        assert_eq!(crc32c(b"Hello world!"), 0x7b98_e751);
    }

    #[test]
    fn hardware_and_software_agree_and_append_composes() {
        let data: alloc::vec::Vec<u8> = (0..10_000u32).map(|i| (i * 7 + i / 13) as u8).collect();
        for split in [0, 1, 63, 4096, 9999, 10_000] {
            let (a, b) = data.split_at(split);
            assert_eq!(crc32c_append(crc32c(a), b), crc32c(&data));
            assert_eq!(software_append(software_append(0, a), b), crc32c(&data));
        }
    }
}
