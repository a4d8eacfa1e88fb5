//! Blocks as a chunkserver keeps them on disk (files and packs), for tests that damage or
//! remove them.

use super::*;

/// The file of block `hex` in the data folder `data` of a chunkserver (a block of more
/// than `packs::MAX_PACKED` bytes; smaller ones are packed).
pub fn block_file(data: &Path, hex: &str) -> PathBuf {
    data.join("blocks").join(&hex[0..2]).join(hex)
}

/// The blocks packed in the data folder `data` of a chunkserver, as hex (read from its
/// packs, which the chunkserver may be writing meanwhile).
pub fn packed_blocks(data: &Path) -> Vec<String> {
    meridian_chunkserver::packs::stored_offline(&data.join("packs"))
        .unwrap_or_default()
        .iter()
        .map(|id| id.to_hex())
        .collect()
}

/// Takes block `hex` away from the data folder `data` of a stopped chunkserver: its file,
/// or its packed copy.
pub fn remove_block(data: &Path, hex: &str) -> Result<()> {
    match fs::remove_file(block_file(data, hex)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
        _ => {}
    }
    let id: meridian_proto::BlockId = hex.parse().map_err(anyhow::Error::msg)?;
    meridian_chunkserver::packs::remove_offline(&data.join("packs"), &id)?;
    Ok(())
}

/// Every block under the `blocks` folder `dir` of a chunkserver's data folder: its files,
/// and the blocks packed beside it.
pub fn block_files(dir: &Path) -> Vec<String> {
    let mut out = dir.parent().map(packed_blocks).unwrap_or_default();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Some(name) = p.file_name().and_then(|n| n.to_str()) {
                out.push(name.to_string());
            }
        }
    }
    out
}
