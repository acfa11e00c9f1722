//! The machinery of a pool's `map`: inputs cut into chunks, each chunk one task, at
//! most a few tasks per worker in flight, results streamed back one per input.

use std::sync::Arc;

use futures_util::stream::{self, BoxStream, StreamExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::core::Core;
use super::handle::{TaskHandle, submit_job};
use super::protocol::{Failure, JobKind, call_entry};
use super::worker::CallChunk;
use crate::error::{Error, Result};

/// The results of `f` over `inputs`, sent in chunks (of `chunk` inputs, or Python's
/// size when `None`), in input order or as they complete.
pub(crate) fn map_stream<A, R, I>(
    core: &Arc<Core>,
    f: fn(A) -> R,
    inputs: I,
    chunk: Option<usize>,
    ordered: bool,
) -> BoxStream<'static, Result<R>>
where
    A: Serialize + DeserializeOwned + Send + 'static,
    R: Serialize + DeserializeOwned + Send + 'static,
    I: IntoIterator<Item = A>,
    I::IntoIter: Send + 'static,
{
    let inputs = inputs.into_iter();
    let workers = core.workers();
    let chunk = chunk.unwrap_or_else(|| auto_chunk_size(inputs.size_hint(), workers));
    let entry = call_entry::<CallChunk<A, R>>(f);
    let in_flight = workers * (core.window() + 1);
    let core = core.clone();
    let timeout = core.default_timeout();
    let tasks = stream::iter(Chunks {
        inputs,
        size: chunk,
    })
    .map(move |items: Vec<A>| {
        let n = items.len();
        let handle: TaskHandle<Vec<Result<R, Failure>>> = match &entry {
            Ok(entry) => submit_job(&core, JobKind::Call(*entry), &items, timeout),
            Err(err) => TaskHandle::failed(&core, err.clone()),
        };
        async move {
            match handle.await {
                Ok(results) => results
                    .into_iter()
                    .map(|r| r.map_err(Error::from))
                    .collect(),
                Err(err) => (0..n).map(|_| Err(err.clone())).collect::<Vec<_>>(),
            }
        }
    });
    let results = if ordered {
        tasks.buffered(in_flight).boxed()
    } else {
        tasks.buffer_unordered(in_flight).boxed()
    };
    results.flat_map(stream::iter).boxed()
}

/// Python's rule: about four chunks per worker when the length is known.
fn auto_chunk_size((low, high): (usize, Option<usize>), workers: usize) -> usize {
    let len = high.unwrap_or(low);
    if len == 0 {
        return 1;
    }
    len.div_ceil(workers * 4).max(1)
}

struct Chunks<I> {
    inputs: I,
    size: usize,
}

impl<I: Iterator> Iterator for Chunks<I> {
    type Item = Vec<I::Item>;

    fn next(&mut self) -> Option<Vec<I::Item>> {
        let chunk: Vec<I::Item> = self.inputs.by_ref().take(self.size).collect();
        (!chunk.is_empty()).then_some(chunk)
    }
}
