//! A pool traces each task in the process that owns it: a `task` span carrying the job id
//! and the pid of the worker that ran it, and events for worker start, crash and timeout
//! inside that span.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use multiprocess::{Error, ProcessPool};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Metadata, Subscriber};

/// The fields of one span or event, as text.
#[derive(Default, Clone, Debug)]
struct Fields(HashMap<String, String>);

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0
            .insert(field.name().to_string(), format!("{value:?}"));
    }
}

#[derive(Clone, Debug)]
struct SeenSpan {
    name: &'static str,
    fields: Fields,
}

#[derive(Clone, Debug)]
struct SeenEvent {
    parent: Option<u64>,
    fields: Fields,
}

/// Records every span and event, whatever its level.
#[derive(Default)]
struct Recorder {
    next_id: AtomicU64,
    spans: Mutex<HashMap<u64, SeenSpan>>,
    events: Mutex<Vec<SeenEvent>>,
}

#[derive(Clone)]
struct Shared(Arc<Recorder>);

impl Subscriber for Shared {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }

    fn new_span(&self, attributes: &Attributes<'_>) -> Id {
        let id = self.0.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let mut fields = Fields::default();
        attributes.record(&mut fields);
        let name = attributes.metadata().name();
        self.0
            .spans
            .lock()
            .unwrap()
            .insert(id, SeenSpan { name, fields });
        Id::from_u64(id)
    }

    fn record(&self, span: &Id, values: &Record<'_>) {
        if let Some(seen) = self.0.spans.lock().unwrap().get_mut(&span.into_u64()) {
            values.record(&mut seen.fields);
        }
    }

    fn record_follows_from(&self, _: &Id, _: &Id) {}

    fn event(&self, event: &Event<'_>) {
        let mut fields = Fields::default();
        event.record(&mut fields);
        let parent = event.parent().map(Id::into_u64);
        self.0
            .events
            .lock()
            .unwrap()
            .push(SeenEvent { parent, fields });
    }

    fn enter(&self, _: &Id) {}

    fn exit(&self, _: &Id) {}
}

fn pid_of(_: ()) -> u32 {
    std::process::id()
}

fn exits(_: ()) -> u32 {
    std::process::exit(5)
}

fn loops(_: ()) -> u32 {
    #[allow(clippy::empty_loop)]
    loop {}
}

impl Recorder {
    fn task_spans_on(&self, worker: u32) -> Vec<SeenSpan> {
        let spans = self.spans.lock().unwrap();
        spans
            .values()
            .filter(|s| s.name == "task")
            .filter(|s| s.fields.0.get("worker") == Some(&worker.to_string()))
            .cloned()
            .collect()
    }

    /// The events with this message, each with the span it was reported in.
    fn events_named(&self, message: &str) -> Vec<(SeenEvent, Option<SeenSpan>)> {
        let spans = self.spans.lock().unwrap();
        let events = self.events.lock().unwrap();
        events
            .iter()
            .filter(|e| e.fields.0.get("message").map(String::as_str) == Some(message))
            .map(|e| (e.clone(), e.parent.and_then(|p| spans.get(&p).cloned())))
            .collect()
    }
}

#[tokio::test]
async fn tasks_are_traced_with_their_worker_and_failures() {
    let recorder = Arc::new(Recorder::default());
    tracing::subscriber::set_global_default(Shared(recorder.clone())).unwrap();
    let leaks = common::LeakCheck::start().await;
    let pool = ProcessPool::builder()
        .workers(1)
        .task_timeout(Duration::from_millis(300))
        .build()
        .await
        .unwrap();

    let first = pool.apply(pid_of, ()).await.unwrap();
    let spans = recorder.task_spans_on(first);
    assert_eq!(spans.len(), 1, "one task span names worker {first}");
    assert!(spans[0].fields.0.contains_key("id"), "{spans:?}");

    assert!(matches!(
        pool.apply(exits, ()).await,
        Err(Error::WorkerDied { code: Some(5), .. })
    ));
    let crashes = recorder.events_named("worker died running a task");
    assert_eq!(crashes.len(), 1, "{crashes:?}");
    let (crash, span) = &crashes[0];
    let span = span
        .as_ref()
        .expect("the crash is reported inside its task's span");
    assert_eq!(span.name, "task");
    assert_eq!(span.fields.0.get("worker"), crash.fields.0.get("worker"));

    let second = pool.apply(pid_of, ()).await.unwrap();
    assert_ne!(first, second, "a new worker took the crashed one's place");
    assert!(matches!(
        pool.apply(loops, ()).await,
        Err(Error::Timeout { .. })
    ));
    let timeouts = recorder.events_named("task timed out; worker killed");
    assert_eq!(timeouts.len(), 1, "{timeouts:?}");
    let span = timeouts[0]
        .1
        .as_ref()
        .expect("reported inside the task's span");
    assert_eq!(span.fields.0.get("worker"), Some(&second.to_string()));

    // The first worker, and one replacement after each failure.
    let started = recorder.events_named("pool worker started");
    assert!(started.len() >= 3, "{started:?}");

    pool.close().await;
    drop(pool);
    leaks.finish().await;
}
