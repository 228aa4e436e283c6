//! Load-time edits of the BPF object that aya's loader has no option for.
use object::{Object as _, ObjectSection as _, ObjectSymbol as _};

/// Offset of `map_flags` in a legacy `bpf_map_def` (type, key size, value size, max entries,
/// flags, ...: `u32` each), the layout aya-ebpf's `#[map]` writes into the `maps` section.
const MAP_FLAGS_OFFSET: usize = 16;

/// An ELF object in 8-byte aligned memory: the ELF parser reads its headers in place.
pub struct AlignedObject {
    words: Vec<u64>,
    len: usize,
}

impl AlignedObject {
    /// The object's bytes.
    #[must_use]
    pub fn bytes(&self) -> &[u8] {
        // SAFETY: `words` holds at least `len` initialized bytes; u8 has no alignment.
        unsafe { std::slice::from_raw_parts(self.words.as_ptr().cast::<u8>(), self.len) }
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `bytes`, uniquely borrowed.
        unsafe { std::slice::from_raw_parts_mut(self.words.as_mut_ptr().cast::<u8>(), self.len) }
    }
}

/// A copy of `elf` where map `name` (a legacy map definition) has `map_flags` `flags`.
///
/// # Errors
/// The object does not parse or has no such map definition.
pub fn with_map_flags(elf: &[u8], name: &str, flags: u32) -> Result<AlignedObject, String> {
    let at = map_def_offset(elf, name)? + MAP_FLAGS_OFFSET;
    let mut copy = AlignedObject { words: vec![0; elf.len().div_ceil(8)], len: elf.len() };
    copy.bytes_mut().copy_from_slice(elf);
    copy.bytes_mut()[at..at + 4].copy_from_slice(&flags.to_le_bytes());
    Ok(copy)
}

/// File offset of map `name`'s definition in `elf`.
fn map_def_offset(elf: &[u8], name: &str) -> Result<usize, String> {
    let file = object::File::parse(elf).map_err(|e| e.to_string())?;
    let symbol =
        file.symbols().find(|s| s.name() == Ok(name)).ok_or_else(|| format!("no symbol {name}"))?;
    let section = symbol
        .section_index()
        .and_then(|i| file.section_by_index(i).ok())
        .ok_or_else(|| format!("{name} is in no section"))?;
    if section.name() != Ok("maps") || symbol.size() < 20 {
        return Err(format!("{name} is not a map definition"));
    }
    let (start, _) = section.file_range().ok_or_else(|| format!("{name}: no file data"))?;
    let at = start + (symbol.address() - section.address());
    let at = usize::try_from(at).map_err(|e| e.to_string())?;
    if at + 20 > elf.len() {
        return Err(format!("{name}: truncated"));
    }
    Ok(at)
}

/// The flags map `name` has in `elf`.
#[cfg(test)]
fn map_flags(elf: &[u8], name: &str) -> Result<u32, String> {
    map_def_field(elf, name, MAP_FLAGS_OFFSET)
}

/// The `u32` at `field` in map `name`'s definition.
#[cfg(test)]
fn map_def_field(elf: &[u8], name: &str, field: usize) -> Result<u32, String> {
    let at = map_def_offset(elf, name)? + field;
    Ok(u32::from_le_bytes(elf[at..at + 4].try_into().map_err(|_| "truncated".to_owned())?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use leak_common::{MAP_ALLOCS, MAP_STACKS};

    /// `BPF_F_NO_PREALLOC`.
    const NO_PREALLOC: u32 = 1;

    #[test]
    fn clears_the_flag_of_one_map_only() {
        let elf = super::super::EBPF_OBJECT;
        assert_eq!(map_flags(elf, MAP_ALLOCS), Ok(NO_PREALLOC));
        let patched = with_map_flags(elf, MAP_ALLOCS, 0).unwrap();
        assert_eq!(map_flags(patched.bytes(), MAP_ALLOCS), Ok(0));
        assert_eq!(map_flags(patched.bytes(), MAP_STACKS), Ok(NO_PREALLOC));
        // Everything else is unchanged, and the type is still a hash.
        let diff = elf.iter().zip(patched.bytes()).filter(|(a, b)| a != b).count();
        assert_eq!(diff, 1);
        // BPF_MAP_TYPE_HASH, 16-byte keys: the definition the flags were found in.
        assert_eq!(map_def_field(patched.bytes(), MAP_ALLOCS, 0), Ok(1));
        assert_eq!(map_def_field(patched.bytes(), MAP_ALLOCS, 4), Ok(16));
        assert!(with_map_flags(elf, "NO_SUCH_MAP", 0).is_err());
    }
}
