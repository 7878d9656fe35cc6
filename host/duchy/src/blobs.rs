//! Blob files: written to a temporary name and renamed into place, so a reader never sees a
//! partial blob and a retried write of the same key replaces it atomically.

use std::path::Path;

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

/// Marks the temporary file of a blob being written: `{name}.tmp-{random}`.
const PARTIAL_MARK: &str = ".tmp-";

/// Streams chunks into a blob; `finish` makes it visible under its final path. Dropped
/// without `finish` (an aborted upload, a cancelled call), it removes its partial file.
pub struct BlobWriter {
    file: tokio::fs::File,
    tmp: std::path::PathBuf,
    dest: std::path::PathBuf,
    hasher: Sha256,
    size: u64,
    committed: bool,
}

impl BlobWriter {
    pub async fn create(dest: &Path) -> Result<BlobWriter> {
        if let Some(parent) = dest.parent()
            && !tokio::fs::try_exists(parent).await.unwrap_or(false)
        {
            tokio::fs::create_dir_all(parent)
                .await
                .with_context(|| format!("creating {}", parent.display()))?;
            // New directories are durable once their parents are (keys are at most four
            // components deep below the blob root).
            for dir in parent.ancestors().skip(1).take(4) {
                sync_dir(dir).await?;
            }
        }
        let tmp = dest.with_extension(format!("{}{}", &PARTIAL_MARK[1..], rand::random::<u64>()));
        let file = tokio::fs::File::create(&tmp)
            .await
            .with_context(|| format!("creating {}", tmp.display()))?;
        Ok(BlobWriter {
            file,
            tmp,
            dest: dest.to_path_buf(),
            hasher: Sha256::new(),
            size: 0,
            committed: false,
        })
    }

    pub async fn write(&mut self, chunk: &[u8]) -> Result<()> {
        self.hasher.update(chunk);
        self.size += chunk.len() as u64;
        self.file
            .write_all(chunk)
            .await
            .with_context(|| format!("writing {}", self.tmp.display()))
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// Flushes, renames into place and returns (size, hex sha256).
    pub async fn finish(mut self) -> Result<(u64, String)> {
        self.file.flush().await?;
        self.file.sync_all().await?;
        tokio::fs::rename(&self.tmp, &self.dest)
            .await
            .with_context(|| format!("renaming into {}", self.dest.display()))?;
        self.committed = true;
        // The rename is durable only once the directory is: a power loss must not drop a
        // blob whose record (committed right after) survives.
        if let Some(dir) = self.dest.parent() {
            sync_dir(dir).await?;
        }
        Ok((self.size, hex::encode(self.hasher.finalize_reset())))
    }

    /// Removes the partial file.
    pub async fn abort(mut self) {
        if tokio::fs::remove_file(&self.tmp).await.is_ok() {
            self.committed = true;
        }
    }
}

impl Drop for BlobWriter {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// Removes every partial blob (`*.tmp-*`) under `root`, left by a run that stopped while
/// receiving or writing. Returns how many were removed.
pub async fn sweep_partial(root: &Path) -> Result<usize> {
    fn sweep(dir: &Path, removed: &mut usize) -> std::io::Result<()> {
        let entries = match std::fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = entry?;
            let kind = entry.file_type()?;
            let path = entry.path();
            if kind.is_dir() {
                sweep(&path, removed)?;
            } else if entry.file_name().to_string_lossy().contains(PARTIAL_MARK) {
                std::fs::remove_file(&path)?;
                *removed += 1;
            }
        }
        Ok(())
    }
    let root = root.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let mut removed = 0;
        sweep(&root, &mut removed)
            .with_context(|| format!("removing partial blobs under {}", root.display()))?;
        Ok(removed)
    })
    .await
    .context("partial-blob sweep task")?
}

/// fsyncs a directory (its entries: renames and new files in it).
pub async fn sync_dir(dir: &Path) -> Result<()> {
    let d = tokio::fs::File::open(dir)
        .await
        .with_context(|| format!("opening directory {}", dir.display()))?;
    d.sync_all()
        .await
        .with_context(|| format!("syncing directory {}", dir.display()))
}

/// Writes a whole blob at once.
pub async fn write_blob(dest: &Path, data: &[u8]) -> Result<(u64, String)> {
    let mut w = BlobWriter::create(dest).await?;
    w.write(data).await?;
    w.finish().await
}

pub async fn read_blob(path: &Path) -> Result<Vec<u8>> {
    tokio::fs::read(path)
        .await
        .with_context(|| format!("reading blob {}", path.display()))
}

/// A blob being read in chunks (see [`open_chunks`]).
pub struct ChunkedBlob {
    /// Size of the blob in bytes.
    pub len: u64,
    /// The chunks, in order; one empty chunk for an empty blob.
    pub chunks: BlobChunks,
    /// Receives the error if reading fails part-way. The chunk stream then never ends, so a
    /// call streaming it must be abandoned (not completed with a truncated body).
    pub failed: tokio::sync::oneshot::Receiver<String>,
}

/// Opens the blob at `path` for streaming it out `chunk` bytes at a time, so at most one
/// chunk of it is in memory at once.
pub async fn open_chunks(path: &Path, chunk: usize) -> Result<ChunkedBlob> {
    let file = tokio::fs::File::open(path)
        .await
        .with_context(|| format!("opening blob {}", path.display()))?;
    let len = file
        .metadata()
        .await
        .with_context(|| format!("reading the size of blob {}", path.display()))?
        .len();
    let (fail, failed) = tokio::sync::oneshot::channel();
    Ok(ChunkedBlob {
        len,
        chunks: BlobChunks {
            file,
            left: len,
            chunk: chunk.max(1),
            buf: Vec::new(),
            filled: 0,
            empty_pending: len == 0,
            fail: Some(fail),
            display: path.display().to_string(),
        },
        failed,
    })
}

/// The chunk stream of [`ChunkedBlob`].
pub struct BlobChunks {
    file: tokio::fs::File,
    left: u64,
    chunk: usize,
    buf: Vec<u8>,
    filled: usize,
    empty_pending: bool,
    /// Taken when a read fails; the stream is then pending forever.
    fail: Option<tokio::sync::oneshot::Sender<String>>,
    display: String,
}

impl BlobChunks {
    fn failed(&mut self, why: String) -> std::task::Poll<Option<Vec<u8>>> {
        if let Some(fail) = self.fail.take() {
            let _ = fail.send(format!("reading blob {}: {why}", self.display));
        }
        std::task::Poll::Pending
    }
}

impl tokio_stream::Stream for BlobChunks {
    type Item = Vec<u8>;

    fn poll_next(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Vec<u8>>> {
        use std::task::Poll;
        use tokio::io::AsyncRead;
        let this = self.get_mut();
        if this.fail.is_none() {
            return Poll::Pending;
        }
        if this.left == 0 {
            if this.empty_pending {
                this.empty_pending = false;
                return Poll::Ready(Some(Vec::new()));
            }
            return Poll::Ready(None);
        }
        if this.buf.is_empty() {
            let want = usize::try_from(this.left)
                .unwrap_or(usize::MAX)
                .min(this.chunk);
            this.buf = vec![0u8; want];
            this.filled = 0;
        }
        loop {
            let mut rb = tokio::io::ReadBuf::new(&mut this.buf[this.filled..]);
            match std::pin::Pin::new(&mut this.file).poll_read(cx, &mut rb) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return this.failed(e.to_string()),
                Poll::Ready(Ok(())) => {
                    let n = rb.filled().len();
                    if n == 0 {
                        return this.failed(format!("ends {} bytes early", this.left));
                    }
                    this.filled += n;
                    if this.filled == this.buf.len() {
                        this.left -= this.filled as u64;
                        return Poll::Ready(Some(std::mem::take(&mut this.buf)));
                    }
                }
            }
        }
    }
}

/// Whether an error (anywhere in its chain) says the disk or the quota is full: an I/O error
/// `StorageFull` / ENOSPC / EDQUOT, or SQLite's SQLITE_FULL.
pub fn is_storage_full(e: &anyhow::Error) -> bool {
    fn io_full(io: &std::io::Error) -> bool {
        io.kind() == std::io::ErrorKind::StorageFull || matches!(io.raw_os_error(), Some(28 | 122))
    }
    e.chain().any(|c| {
        if let Some(io) = c.downcast_ref::<std::io::Error>() {
            return io_full(io);
        }
        match c.downcast_ref::<sqlx::Error>() {
            Some(sqlx::Error::Io(io)) => io_full(io),
            Some(sqlx::Error::Database(d)) => d
                .code()
                .and_then(|c| c.parse::<i64>().ok())
                .is_some_and(|c| c & 0xff == 13),
            _ => false,
        }
    })
}

/// The status of a local storage error: RESOURCE_EXHAUSTED when the disk is full (the caller
/// should retry later; nothing was recorded), INTERNAL otherwise.
pub fn storage_status(e: anyhow::Error) -> tonic::Status {
    if is_storage_full(&e) {
        tracing::error!("storage full: {e:#}");
        tonic::Status::resource_exhausted(
            "the duchy's storage is full; nothing was recorded, retry later",
        )
    } else {
        tracing::error!("storage error: {e:#}");
        tonic::Status::internal(format!("{e:#}"))
    }
}

/// Receives the body chunks of a client stream into a new blob at `dest`.
///
/// `chunk_of` returns the bytes of a body-chunk message and `None` for any other message
/// (which is refused). At least one chunk is required when `require_body` is set; more than
/// `max` bytes is RESOURCE_EXHAUSTED. On any error the partial blob is removed.
pub async fn receive_body<T, F>(
    stream: &mut tonic::Streaming<T>,
    dest: &Path,
    max: u64,
    require_body: bool,
    chunk_of: F,
) -> Result<(u64, String), tonic::Status>
where
    F: Fn(T) -> Option<Vec<u8>>,
{
    let internal = storage_status;
    let mut writer = BlobWriter::create(dest).await.map_err(internal)?;
    let mut chunks = 0usize;
    let outcome: Result<(), tonic::Status> = async {
        while let Some(msg) = stream
            .message()
            .await
            .map_err(halo_limits::oversized_message_status)?
        {
            let data = chunk_of(msg).ok_or_else(|| {
                tonic::Status::invalid_argument("only body chunks may follow the header")
            })?;
            chunks += 1;
            if writer.size() + data.len() as u64 > max {
                return Err(tonic::Status::resource_exhausted(format!(
                    "payload larger than {max} bytes"
                )));
            }
            writer.write(&data).await.map_err(internal)?;
        }
        if require_body && chunks == 0 {
            return Err(tonic::Status::invalid_argument("header without body"));
        }
        Ok(())
    }
    .await;
    match outcome {
        Ok(()) => writer.finish().await.map_err(internal),
        Err(e) => {
            writer.abort().await;
            Err(e)
        }
    }
}

// ---- blob keys --------------------------------------------------------------------------
//
// A blob key is a relative path under `{data_dir}/blobs`. Keys are made only here, from ids
// the host validated (`names::valid_id`: an id segment, never `.`-led) and numbers; no string
// from a plugin, a peer or a data provider becomes part of a path any other way, and
// `Store::blob_path` refuses any key that is not of this shape.

fn id_component(what: &str, id: &str) -> Result<()> {
    if crate::names::valid_id(id) {
        Ok(())
    } else {
        Err(anyhow::anyhow!(
            "{what} {:?} is not a valid id; refusing to use it in a blob name",
            id.chars().take(80).collect::<String>()
        ))
    }
}

/// Key of a payload received from `sender` under `description`.
pub fn input_key(global_id: &str, description: i32, sender: &str) -> Result<String> {
    id_component("computation id", global_id)?;
    id_component("sender duchy id", sender)?;
    Ok(format!("inputs/{global_id}/{description}-{sender}.bin"))
}

/// Key of the data fulfilled for requisition `requisition_id`.
pub fn requisition_key(global_id: &str, requisition_id: &str) -> Result<String> {
    id_component("computation id", global_id)?;
    id_component("requisition id", requisition_id)?;
    Ok(format!("requisitions/{global_id}/{requisition_id}.bin"))
}

/// Key of the `index`th payload attempt `attempt` of a stage produced (the recipient is
/// recorded beside it, never in the name). The attempt is part of the name, so a stale worker
/// (lease lost) can never overwrite the files of the attempt that owns the stage.
pub fn output_key(global_id: &str, stage: i32, attempt: u32, index: usize) -> Result<String> {
    id_component("computation id", global_id)?;
    Ok(format!("outputs/{global_id}/{stage}/{attempt}-{index}.bin"))
}

/// Key of the directory holding every attempt's payloads of a stage (removed once the
/// computation left the stage: its effects were delivered).
pub fn output_dir_key(global_id: &str, stage: i32) -> Result<String> {
    id_component("computation id", global_id)?;
    Ok(format!("outputs/{global_id}/{stage}"))
}

/// Whether `key` is a relative path of 1..=4 components, each 1..=100 of
/// `[A-Za-z0-9_.-]` and not starting with a dot (so never `.` or `..`).
pub fn is_safe_key(key: &str) -> bool {
    let parts: Vec<&str> = key.split('/').collect();
    (1..=4).contains(&parts.len())
        && parts.iter().all(|p| {
            !p.is_empty()
                && p.len() <= 100
                && !p.starts_with('.')
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        })
}

#[cfg(test)]
mod key_tests {
    use super::*;

    #[test]
    fn keys_from_valid_ids_are_safe() {
        let k = input_key("AAAAAAAAAAE", -3, "worker1").unwrap();
        assert_eq!(k, "inputs/AAAAAAAAAAE/-3-worker1.bin");
        assert!(is_safe_key(&k));
        assert!(is_safe_key(&requisition_key("c_1", "r-2").unwrap()));
        assert!(is_safe_key(
            &output_key("c", i32::MIN, u32::MAX, usize::MAX).unwrap()
        ));
    }

    #[test]
    fn hostile_ids_are_refused() {
        for bad in ["..", "../x", "/abs", "a/b", "", ".", "a\\b", "x\0", "é"] {
            assert!(input_key("c", 1, bad).is_err(), "{bad:?}");
            assert!(input_key(bad, 1, "w").is_err(), "{bad:?}");
            assert!(requisition_key("c", bad).is_err(), "{bad:?}");
            assert!(requisition_key(bad, "r").is_err(), "{bad:?}");
            assert!(output_key(bad, 1, 1, 0).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn unsafe_keys_are_recognised() {
        for bad in [
            "",
            "/",
            "/etc/passwd",
            "../x",
            "a/../b",
            "a/./b",
            "a//b",
            "a/b/",
            ".hidden",
            "a\\..\\b",
            "a/b/c/d/e",
            "C:x",
        ] {
            assert!(!is_safe_key(bad), "{bad:?}");
        }
    }
}
