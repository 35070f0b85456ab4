//! The admin API served in-process on 127.0.0.1, over a sync engine of a
//! directory bucket: for tests that call it over real HTTP and also reach
//! into the engine. Each test file adds the calls it needs.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use kvreplica::admin::{self, AdminContext, Tokens};
use kvreplica::server::Limits;
use kvreplica::source::SourceUrl;
use kvreplica::sync::Syncer;

pub struct Api {
    pub base: String,
    pub client: reqwest::Client,
    pub syncer: Arc<Syncer>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Api {
    /// Serves the admin API of a replica `db` of the bucket in `dir`
    /// (loaded first when `load`), accepting `tokens`, within `limits`.
    pub async fn start(
        dir: &Path,
        db: &Path,
        tokens: Vec<String>,
        load: bool,
        limits: Limits,
    ) -> Api {
        let url = SourceUrl::parse(&format!("file://{}/", dir.display())).unwrap();
        let syncer = super::syncer(&url, db, load).await;
        let ctx = AdminContext::new(syncer.clone(), Tokens::new(tokens), db).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(admin::serve_with(ctx, listener, limits, async move {
            let _ = rx.await;
        }));
        Api {
            base,
            client: reqwest::Client::new(),
            syncer,
            stop: Some(tx),
            task,
        }
    }

    /// The usual case: the replica `db` of the bucket in `dir`, loaded,
    /// accepting `token`, within the default limits.
    pub async fn start_loaded(dir: &Path, db: &Path, token: &str) -> Api {
        Api::start(dir, db, vec![token.into()], true, admin::limits()).await
    }

    /// Shuts the listener down and waits (10 s at most) until it stopped.
    pub async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("admin server stops on shutdown")
            .unwrap();
    }
}
