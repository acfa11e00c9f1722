//! Which binary is running.
//!
//! A child is told which function to run as an offset in the executable's code (see
//! `entry`). That is only meaningful in the very same binary, so parent and child compare
//! a build identity first: the ELF build-id note of `/proc/self/exe` (every mainstream
//! Linux toolchain emits one), or, lacking it, the executable's device, inode, size and
//! modification time.

use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::sync::OnceLock;

pub(super) const EXE: &str = "/proc/self/exe";
const PT_NOTE: u32 = 4;
const NT_GNU_BUILD_ID: u32 = 3;

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_is_stable_and_nonempty() {
        assert!(!current().is_empty());
        assert_eq!(compute().unwrap(), current());
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
