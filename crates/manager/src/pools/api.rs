//! The pool commands of the API: one [`PoolRequest`] per call, answered by
//! `Manager::pool_handle` with one [`PoolReply`]; `api.rs` carries them as
//! `ApiRequest::Pool` and `ApiReply::Pool`. The operations' OpenAPI entries
//! are here too (never called: they carry `#[utoipa::path]`).

#![allow(dead_code)]

use super::types::*;
use crate::api::{ApiError, ErrorBody};
use crate::manager::Manager;
use serde::Serialize;
use std::sync::Arc;

#[derive(Debug, Clone, PartialEq)]
pub enum PoolRequest {
    Create(CreatePool),
    List,
    Show { name: String },
    Resize { name: String, req: ResizePool },
    Destroy { name: String, force: bool },
    UserAdd(AddPoolUser),
    UserList,
    UserRemove { name: String },
}

#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum PoolReply {
    /// A pool just defined (201); its partitions are booting.
    Created(PoolView),
    Pool(PoolView),
    Pools(Vec<PoolView>),
    Destroyed(PoolDestroyed),
    /// A user just added (201), with the token shown once.
    UserAdded(PoolUserAdded),
    Users(Vec<PoolUserView>),
    UserRemoved(PoolUserRemoved),
}

impl PoolReply {
    pub fn status(&self) -> u16 {
        match self {
            Self::Created(_) | Self::UserAdded(_) => 201,
            _ => 200,
        }
    }
}

impl Manager {
    pub(crate) async fn pool_handle(
        self: &Arc<Self>,
        req: PoolRequest,
    ) -> Result<PoolReply, ApiError> {
        use PoolReply as R;
        Ok(match req {
            PoolRequest::Create(c) => R::Created(self.pool_create(c).await?),
            PoolRequest::List => R::Pools(self.pool_list()),
            PoolRequest::Show { name } => R::Pool(self.pool_show(&name)?),
            PoolRequest::Resize { name, req } => R::Pool(self.pool_resize(&name, req).await?),
            PoolRequest::Destroy { name, force } => {
                R::Destroyed(self.pool_destroy(&name, force).await?)
            }
            PoolRequest::UserAdd(a) => R::UserAdded(self.pool_user_add(a).await?),
            PoolRequest::UserList => R::Users(self.pool_user_list().await?),
            PoolRequest::UserRemove { name } => R::UserRemoved(self.pool_user_remove(&name).await?),
        })
    }
}

#[utoipa::path(get, path = "/v1/pools", tag = "pools", operation_id = "pool_list",
    responses((status = 200, description = "every pool with its partitions", body = Vec<PoolView>)))]
pub fn pool_list() {}

#[utoipa::path(post, path = "/v1/pools", tag = "pools", operation_id = "pool_create",
    request_body = CreatePool,
    responses(
        (status = 201, description = "stored; its partitions NAME-1..N boot in the background and turn idle once the program answers on its port", body = PoolView),
        (status = 400, description = "malformed statement or a value out of range", body = ErrorBody),
        (status = 409, description = "the pool exists, or a partition it would name exists", body = ErrorBody),
    ))]
pub fn pool_create() {}

#[utoipa::path(get, path = "/v1/pools/{name}", tag = "pools", operation_id = "pool_show",
    params(("name" = String, Path, description = "pool name")),
    responses(
        (status = 200, description = "the statement and each partition's primary id, state, alternate id and sessions served", body = PoolView),
        (status = 404, description = "no such pool", body = ErrorBody),
    ))]
pub fn pool_show() {}

#[utoipa::path(delete, path = "/v1/pools/{name}", tag = "pools", operation_id = "pool_destroy",
    params(
        ("name" = String, Path, description = "pool name"),
        ("force" = Option<bool>, Query, description = "end open sessions instead of refusing"),
    ),
    responses(
        (status = 200, description = "the pool and its partitions destroyed", body = PoolDestroyed),
        (status = 400, description = "force is not a boolean", body = ErrorBody),
        (status = 404, description = "no such pool", body = ErrorBody),
        (status = 409, description = "sessions are open (without force)", body = ErrorBody),
    ))]
pub fn pool_destroy() {}

#[utoipa::path(post, path = "/v1/pools/{name}/resize", tag = "pools", operation_id = "pool_resize",
    params(("name" = String, Path, description = "pool name")),
    request_body = ResizePool,
    responses(
        (status = 200, description = "the new size and max; partitions grow or shrink toward them", body = PoolView),
        (status = 400, description = "malformed body or a value out of range", body = ErrorBody),
        (status = 404, description = "no such pool", body = ErrorBody),
        (status = 409, description = "the statement changed concurrently", body = ErrorBody),
    ))]
pub fn pool_resize() {}

#[utoipa::path(get, path = "/v1/pool-users", tag = "pools", operation_id = "pool_user_list",
    responses((status = 200, description = "every pool user with its programs and limit (never a token)", body = Vec<PoolUserView>)))]
pub fn pool_user_list() {}

#[utoipa::path(post, path = "/v1/pool-users", tag = "pools", operation_id = "pool_user_add",
    request_body = AddPoolUser,
    responses(
        (status = 201, description = "added; the token is in this answer only (the store keeps its hash)", body = PoolUserAdded),
        (status = 400, description = "a bad name, no programs, or a limit out of range", body = ErrorBody),
        (status = 409, description = "the user exists", body = ErrorBody),
    ))]
pub fn pool_user_add() {}

#[utoipa::path(delete, path = "/v1/pool-users/{name}", tag = "pools", operation_id = "pool_user_remove",
    params(("name" = String, Path, description = "user name")),
    responses(
        (status = 200, description = "removed; the token stops working", body = PoolUserRemoved),
        (status = 404, description = "no such user", body = ErrorBody),
    ))]
pub fn pool_user_remove() {}
