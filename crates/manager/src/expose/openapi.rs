//! The expose operations of the OpenAPI document (`crate::openapi` lists
//! them); never called, like the others there.

#![allow(dead_code)]

use super::{ExposePoolRequest, ExposeRequest, Exposed, RouteView, Unexposed};
use crate::api::ErrorBody;

#[utoipa::path(post, path = "/v1/partitions/{name}/routes", tag = "shared port", operation_id = "expose",
    params(("name" = String, Path, description = "partition name")),
    request_body = ExposeRequest,
    responses(
        (status = 200, description = "the rows written (all or none); served while the partition runs", body = Exposed),
        (status = 400, description = "a domain that is not a host name, *.suffix or *; port 0; a listener not configured", body = ErrorBody),
        (status = 404, description = "no such partition", body = ErrorBody),
        (status = 409, description = "a domain is routed to another partition on that listener (the message names it), \
            the partition has no VLAN address, or no [portshare] listeners are configured", body = ErrorBody),
    ))]
pub fn expose() {}

#[utoipa::path(delete, path = "/v1/partitions/{name}/routes", tag = "shared port", operation_id = "unexpose",
    params(("name" = String, Path, description = "partition name"),
        ("domain" = Option<String>, Query, description = "remove only this domain's rows (every listener)")),
    responses(
        (status = 200, description = "the rows removed", body = Unexposed),
        (status = 400, description = "the domain is malformed", body = ErrorBody),
        (status = 404, description = "no such partition, or no such route of it", body = ErrorBody),
    ))]
pub fn unexpose() {}

#[utoipa::path(get, path = "/v1/routes", tag = "shared port", operation_id = "route_list",
    responses((status = 200, description = "every route of the store with what it answers now", body = Vec<RouteView>)))]
pub fn route_list() {}

#[utoipa::path(post, path = "/v1/programs/{program}/routes", tag = "shared port", operation_id = "expose_pool",
    params(("program" = String, Path, description = "a program service pools serve")),
    request_body = ExposePoolRequest,
    responses(
        (status = 200, description = "the rows written (all or none); each connection to them is one allocation of the program", body = Exposed),
        (status = 400, description = "a malformed program, user or domain; wait_ms over 300000; a listener not configured", body = ErrorBody),
        (status = 404, description = "no such pool user", body = ErrorBody),
        (status = 409, description = "a domain is routed elsewhere on that listener, the user may not run the program, \
            or no [portshare] listeners are configured", body = ErrorBody),
    ))]
pub fn expose_pool() {}

#[utoipa::path(delete, path = "/v1/programs/{program}/routes", tag = "shared port", operation_id = "unexpose_pool",
    params(("program" = String, Path, description = "a program service pools serve"),
        ("domain" = Option<String>, Query, description = "remove only this domain's rows (every listener)")),
    responses(
        (status = 200, description = "the rows removed", body = Unexposed),
        (status = 400, description = "the program or domain is malformed", body = ErrorBody),
        (status = 404, description = "no route of this program (of that domain)", body = ErrorBody),
    ))]
pub fn unexpose_pool() {}
