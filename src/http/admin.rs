//! The admin API (contract 3.4), behind [`AdminAuth`](super::extract::AdminAuth).

use axum::Router;

use crate::state::AppState;

/// Admin routes, nested under `/admin/v1`.
pub fn router() -> Router<AppState> {
    Router::new()
}
