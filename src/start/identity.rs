//! Which binary is running, and where its code lives.
//!
//! A child is told which function to run as an offset from an anchor function. That is
//! only meaningful in the very same binary, so parent and child compare a build identity
//! first: the ELF build-id note of `/proc/self/exe` (every mainstream Linux toolchain
//! emits one), or, lacking it, the executable's device, inode, size and modification
//! time. The parent also checks that the function's address lies in the executable's own
//! code, so a function from a dynamically loaded library is refused instead of run at a
//! meaningless address.

use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::sync::OnceLock;

const EXE: &str = "/proc/self/exe";
const PT_NOTE: u32 = 4;
const NT_GNU_BUILD_ID: u32 = 3;

/// The function every offset is measured from.
#[inline(never)]
pub(crate) extern "C" fn anchor() {}

fn anchor_addr() -> usize {
    anchor as extern "C" fn() as usize
}

/// The offset of a code address from the anchor.
pub(crate) fn offset_of(addr: usize) -> i64 {
    addr.wrapping_sub(anchor_addr()) as i64
}

/// The code address an offset names in this process.
pub(crate) fn addr_of(offset: i64) -> usize {
    anchor_addr().wrapping_add(offset as usize)
}

/// This binary's identity, computed once.
pub(crate) fn current() -> &'static [u8] {
    static IDENTITY: OnceLock<Vec<u8>> = OnceLock::new();
    IDENTITY.get_or_init(|| compute().unwrap_or_default())
}

fn compute() -> io::Result<Vec<u8>> {
    let file = File::open(EXE)?;
    if let Some(id) = elf_build_id(&file)? {
        let mut identity = b"build-id:".to_vec();
        identity.extend(id);
        return Ok(identity);
    }
    let meta = file.metadata()?;
    Ok(format!(
        "file:{}:{}:{}:{}.{}",
        meta.dev(),
        meta.ino(),
        meta.size(),
        meta.mtime(),
        meta.mtime_nsec()
    )
    .into_bytes())
}

fn read_at(file: &File, offset: u64, len: usize) -> io::Result<Vec<u8>> {
    let mut buf = vec![0; len];
    file.read_exact_at(&mut buf, offset)?;
    Ok(buf)
}

fn u16_at(b: &[u8], at: usize) -> usize {
    u16::from_le_bytes([b[at], b[at + 1]]) as usize
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// The `NT_GNU_BUILD_ID` note of a little-endian ELF64 file, if it has one.
fn elf_build_id(file: &File) -> io::Result<Option<Vec<u8>>> {
    let header = read_at(file, 0, 64)?;
    if &header[..4] != b"\x7fELF" || header[4] != 2 || header[5] != 1 {
        return Ok(None);
    }
    let (phoff, phentsize, phnum) = (
        u64_at(&header, 0x20),
        u16_at(&header, 0x36),
        u16_at(&header, 0x38),
    );
    if phentsize < 56 || phnum > 512 {
        return Ok(None);
    }
    let table = read_at(file, phoff, phentsize * phnum)?;
    for entry in table.chunks_exact(phentsize) {
        if u32_at(entry, 0) != PT_NOTE {
            continue;
        }
        let (offset, size) = (u64_at(entry, 0x08), u64_at(entry, 0x20));
        if size > 1 << 20 {
            continue;
        }
        let notes = read_at(file, offset, size as usize)?;
        if let Some(id) = find_build_id(&notes) {
            return Ok(Some(id));
        }
    }
    Ok(None)
}

fn find_build_id(mut notes: &[u8]) -> Option<Vec<u8>> {
    let align4 = |n: usize| (n + 3) & !3;
    while notes.len() >= 12 {
        let namesz = u32_at(notes, 0) as usize;
        let descsz = u32_at(notes, 4) as usize;
        let kind = u32_at(notes, 8);
        let name_end = 12 + align4(namesz);
        let desc_end = name_end.checked_add(align4(descsz))?;
        if desc_end > notes.len() {
            return None;
        }
        if kind == NT_GNU_BUILD_ID && &notes[12..12 + namesz] == b"GNU\0" {
            return Some(notes[name_end..name_end + descsz].to_vec());
        }
        notes = &notes[desc_end..];
    }
    None
}

/// Whether `addr` lies in an executable mapping of this process's own binary.
pub(crate) fn in_own_code(addr: usize) -> bool {
    static RANGES: OnceLock<Vec<(usize, usize)>> = OnceLock::new();
    RANGES
        .get_or_init(|| own_code_ranges().unwrap_or_default())
        .iter()
        .any(|(start, end)| (*start..*end).contains(&addr))
}

fn own_code_ranges() -> io::Result<Vec<(usize, usize)>> {
    let inode = std::fs::metadata(EXE)?.ino();
    let maps = std::fs::read_to_string("/proc/self/maps")?;
    let ranges = maps
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let range = fields.next()?;
            let perms = fields.next()?;
            let ino: u64 = fields.nth(2)?.parse().ok()?;
            if ino != inode || !perms.contains('x') {
                return None;
            }
            let (start, end) = range.split_once('-')?;
            Some((
                usize::from_str_radix(start, 16).ok()?,
                usize::from_str_radix(end, 16).ok()?,
            ))
        })
        .collect();
    Ok(ranges)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_is_stable_and_nonempty() {
        assert!(!current().is_empty());
        assert_eq!(compute().unwrap(), current());
    }

    #[test]
    fn anchor_is_in_own_code_and_heap_is_not() {
        assert!(in_own_code(anchor_addr()));
        let on_heap = Box::new(0u8);
        assert!(!in_own_code(&*on_heap as *const u8 as usize));
    }

    #[test]
    fn offsets_round_trip() {
        let f = identity_is_stable_and_nonempty as fn() as usize;
        assert_eq!(addr_of(offset_of(f)), f);
    }

    #[test]
    fn truncated_notes_are_ignored() {
        assert_eq!(
            find_build_id(&[1, 0, 0, 0, 255, 255, 0, 0, 3, 0, 0, 0]),
            None
        );
        assert_eq!(find_build_id(&[]), None);
    }
}
