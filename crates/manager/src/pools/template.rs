//! A pool's saved template: built once, by booting a *source* partition
//! (`POOL-tpl`), starting the program in it and saving it once the program
//! answers; the pool's partitions are then restored from it (see the
//! manager's `templates` module), so a replacement costs a restore, not a
//! boot. A template that cannot be built leaves the pool booting cold.

use super::driver::{destroy, start_program};
use super::types::CreatePool;
use crate::api::{ApiError, ApiRequest, StartOptions};
use crate::manager::Manager;
use bulkhead_store::TemplateLink;
use std::sync::Arc;

/// The template source's primary id.
pub(super) fn source_of(pool: &str) -> String {
    format!("{pool}-tpl")
}

/// Whether `pool` has a template to restore from, building it first when
/// it has none. False: its partitions boot cold (said in the log).
pub(super) async fn ensure(m: &Arc<Manager>, c: &CreatePool) -> bool {
    let source = source_of(&c.name);
    // The builds of one pool, one at a time; the partitions waiting here
    // restore from what the first one built.
    let lock = m.pools.lock_of(&source);
    let _g = lock.lock().await;
    if m.template_ready(&c.name) {
        return true;
    }
    let built = build(m, c, &source).await;
    if let Err(e) = &built {
        tracing::warn!(pool = %c.name, error = %e, "building the pool's template failed; its partitions boot cold");
    }
    if let Err(e) = remove_source(m, &c.name).await {
        tracing::warn!(pool = %c.name, error = %e, "removing the template source");
    }
    built.is_ok()
}

async fn build(m: &Arc<Manager>, c: &CreatePool, source: &str) -> Result<(), ApiError> {
    remove_source(m, &c.name).await?;
    m.begin_template(&c.name)?;
    let link = TemplateLink::Source(c.name.clone());
    m.create_linked(super::driver::partition_of(c, source), Some(link))
        .await?;
    m.handle(ApiRequest::Start {
        name: source.to_string(),
        opts: StartOptions { wait: true },
    })
    .await?;
    start_program(m, c, source).await?;
    m.save_template(source).await
}

/// Destroys the pool's template source, if there is one: only a partition
/// the pool linked as its source (an administrator's `POOL-tpl` is theirs).
async fn remove_source(m: &Arc<Manager>, pool: &str) -> Result<(), ApiError> {
    let source = source_of(pool);
    match m.store().get(&source).await? {
        Some(r) if r.template == Some(TemplateLink::Source(pool.to_string())) => {
            destroy(m, &source).await
        }
        Some(_) => Err(ApiError::Conflict(format!(
            "partition {source:?} exists and is not this pool's template source"
        ))),
        None => Ok(()),
    }
}

/// Removes the pool's template (the pool is destroyed).
pub(super) async fn discard(m: &Arc<Manager>, pool: &str) {
    let lock = m.pools.lock_of(&source_of(pool));
    let _g = lock.lock().await;
    if let Err(e) = remove_source(m, pool).await {
        tracing::warn!(%pool, error = %e, "removing the template source");
    }
    m.discard_template(pool);
}
