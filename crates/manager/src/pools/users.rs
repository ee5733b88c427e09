//! Pool users in the store: one `PoolKind::User` document per user, the
//! `bulkhead_pool::User` with its token's hash (never the token).

use super::types::*;
use crate::api::ApiError;
use crate::manager::Manager;
use bulkhead_pool::{User, UserError, Users};
use bulkhead_store::{PoolKind, StoreError};

/// Concurrent sessions of a user added without `--max-sessions`.
pub const DEFAULT_MAX_SESSIONS: u32 = 1;

fn view(u: &User) -> PoolUserView {
    PoolUserView {
        name: u.name.clone(),
        programs: u.programs.iter().cloned().collect(),
        max_sessions: u.max_sessions,
    }
}

fn decode(d: &bulkhead_store::PoolDoc) -> Result<User, ApiError> {
    serde_json::from_str(&d.body)
        .map_err(|e| ApiError::Internal(format!("corrupt pool user {:?}: {e}", d.name)))
}

fn user_err(e: UserError) -> ApiError {
    match e {
        UserError::Exists(n) => ApiError::AlreadyExists(format!("pool user {n}")),
        UserError::Unknown(n) => ApiError::NoDevice(format!("pool user {n:?} not found")),
        e => ApiError::BadRequest(e.to_string()),
    }
}

impl Manager {
    /// Adds a user; the reply carries the token, which nothing keeps.
    pub(crate) async fn pool_user_add(&self, a: AddPoolUser) -> Result<PoolUserAdded, ApiError> {
        let programs: Vec<&str> = a.programs.iter().map(String::as_str).collect();
        let max = a.max_sessions.unwrap_or(DEFAULT_MAX_SESSIONS);
        if max > 1024 {
            return Err(ApiError::BadRequest("max_sessions must be 1-1024".into()));
        }
        // The pool crate's rules (names, programs, limit) and its token.
        let mut one = Users::new();
        let token = one
            .add(&a.name, &programs, max, &mut rand::rngs::OsRng)
            .map_err(user_err)?;
        let user = one.get(&a.name).expect("just added").clone();
        let body = serde_json::to_string(&user).expect("a user serialises");
        match self
            .store()
            .pool_doc_put(PoolKind::User, &a.name, 0, &body)
            .await
        {
            Ok(_) => {}
            Err(StoreError::Conflict { .. }) => {
                return Err(user_err(UserError::Exists(a.name)));
            }
            Err(e) => return Err(e.into()),
        }
        Ok(PoolUserAdded {
            user: view(&user),
            token: token.as_str().to_string(),
        })
    }

    pub(crate) async fn pool_user_list(&self) -> Result<Vec<PoolUserView>, ApiError> {
        let docs = self.store().pool_doc_list(PoolKind::User).await?;
        docs.iter().map(|d| decode(d).map(|u| view(&u))).collect()
    }

    pub(crate) async fn pool_user_remove(&self, name: &str) -> Result<PoolUserRemoved, ApiError> {
        let d = self
            .store()
            .pool_doc_get(PoolKind::User, name)
            .await?
            .ok_or_else(|| user_err(UserError::Unknown(name.into())))?;
        self.store()
            .pool_doc_delete(PoolKind::User, name, d.revision)
            .await?;
        Ok(PoolUserRemoved {
            removed: name.to_string(),
        })
    }

    /// The user table the gateway checks one ALLOCATE against
    /// (`Users::authorize`): the one user it names, if there is one (one
    /// store read, whatever the number of users).
    pub(crate) async fn pool_user_table(&self, name: &str) -> Result<Users, ApiError> {
        let mut map = serde_json::Map::new();
        if let Some(d) = self.store().pool_doc_get(PoolKind::User, name).await? {
            let v: serde_json::Value = serde_json::from_str(&d.body)
                .map_err(|e| ApiError::Internal(format!("corrupt pool user {:?}: {e}", d.name)))?;
            map.insert(d.name, v);
        }
        serde_json::from_value(serde_json::json!({ "users": map }))
            .map_err(|e| ApiError::Internal(format!("pool users: {e}")))
    }
}
