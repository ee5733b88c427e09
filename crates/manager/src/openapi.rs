//! The API's OpenAPI 3 document, served at `/openapi.json`.

use serde_json::{json, Value};

pub fn document() -> Value {
    let name =
        json!([{ "name": "name", "in": "path", "required": true, "schema": { "type": "string" } }]);
    let err = json!({ "description": "error", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } } });
    let rec = json!({ "description": "the partition", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Partition" } } } });
    let body = |schema: &str| json!({ "content": { "application/json": { "schema": { "$ref": format!("#/components/schemas/{schema}") } } } });
    json!({
        "openapi": "3.0.3",
        "info": { "title": "bulkheadd", "version": env!("CARGO_PKG_VERSION"),
                  "description": "Bulkhead partition manager API. Unix socket (0600) without auth; TCP is TLS and needs `Authorization: Bearer <token>`. Any path answers 405 (with `Allow`) to a method it does not take, 413 to a body over 1 MiB and 408 to a body that does not arrive within the idle timeout." },
        "components": {
            "securitySchemes": { "bearer": { "type": "http", "scheme": "bearer" } },
            "schemas": {
                "Error": { "type": "object", "properties": { "error": { "type": "object", "properties": {
                    "code": { "type": "string", "enum": ["invalid_argument","not_found","already_exists","conflict","over_capacity","unauthorized","no_route","engine","internal"] },
                    "message": { "type": "string" } } } } },
                "Disk": { "type": "object", "required": ["path","format"], "properties": {
                    "path": { "type": "string" }, "format": { "type": "string", "enum": ["raw","qcow2"] }, "readonly": { "type": "boolean" } } },
                "CreatePartition": { "type": "object", "required": ["name","memory_mib","cpu_percent"], "additionalProperties": false, "properties": {
                    "name": { "type": "string", "pattern": "^[a-z0-9][a-z0-9-]{0,47}$" },
                    "vcpus": { "type": "integer", "minimum": 1, "default": 1 },
                    "memory_mib": { "type": "integer", "minimum": 96 },
                    "cpu_percent": { "type": "integer", "minimum": 1, "description": "CPU entitlement, percent of one host CPU (at most 100 × vcpus)" },
                    "image": { "type": "string" }, "cmdline": { "type": "string" },
                    "disks": { "type": "array", "items": { "$ref": "#/components/schemas/Disk" } },
                    "net": { "type": "boolean", "description": "attach to the internal VLAN with an assigned address" },
                    "restart_policy": { "type": "string", "enum": ["never","on-failure","always"] },
                    "hotplug_slots": { "type": "integer", "minimum": 0, "maximum": 16, "default": 0, "description": "PCIe root ports kept free for disks hot-plugged while it runs (makes the machine q35)" },
                    "cpu_model": { "type": "string", "enum": ["x86-64-v1","x86-64-v2"], "default": "x86-64-v2", "description": "named guest CPU model, the same on every host" } } },
                "AttachDisk": { "type": "object", "required": ["path"], "additionalProperties": false, "properties": {
                    "path": { "type": "string", "description": "absolute path of the image on the host" },
                    "format": { "type": "string", "enum": ["raw","qcow2"] }, "readonly": { "type": "boolean" },
                    "id": { "type": "string", "pattern": "^[a-z0-9][a-z0-9-]{0,15}$" } } },
                "AttachedDisk": { "type": "object", "required": ["id","path","format","readonly","slot"], "properties": {
                    "id": { "type": "string" }, "path": { "type": "string" }, "format": { "type": "string", "enum": ["raw","qcow2"] },
                    "readonly": { "type": "boolean" }, "slot": { "type": "integer" } } },
                "DetachedDisk": { "type": "object", "required": ["id"], "properties": { "id": { "type": "string" } } },
                "Partition": { "type": "object", "properties": {
                    "name": { "type": "string" }, "vcpus": { "type": "integer" }, "memory_mib": { "type": "integer" },
                    "cpu_percent": { "type": "integer" },
                    "state": { "type": "string", "enum": ["defined","starting","running","stopping","stopped","failed"] },
                    "net": { "type": "object", "properties": { "ip": { "type": "string" }, "mac": { "type": "string" } } },
                    "created_at": { "type": "integer", "description": "unix ms" }, "state_since": { "type": "integer" },
                    "started_at": { "type": "integer" }, "last_exit": { "type": "string" }, "pid": { "type": "integer" },
                    "restarts": { "type": "integer" }, "revision": { "type": "integer" },
                    "restart_policy": { "type": "string" },
                    "hotplug_slots": { "type": "integer" }, "cpu_model": { "type": "string" },
                    "hotplugged_disks": { "type": "array", "items": { "$ref": "#/components/schemas/AttachedDisk" } } } },
                "StartOptions": { "type": "object", "properties": { "wait": { "type": "boolean" } } },
                "StopOptions": { "type": "object", "properties": { "force": { "type": "boolean" }, "timeout_secs": { "type": "integer", "minimum": 0, "maximum": crate::api::MAX_TIMEOUT_SECS } } },
                "ExecRequest": { "type": "object", "required": ["argv"], "properties": {
                    "argv": { "type": "array", "items": { "type": "string" } }, "timeout_secs": { "type": "integer", "minimum": 1, "maximum": crate::api::MAX_TIMEOUT_SECS } } },
                "ExecResult": { "type": "object", "properties": { "code": { "type": "integer" }, "stdout": { "type": "string" }, "stderr": { "type": "string" } } },
                "Stats": { "type": "object", "properties": {
                    "cpu_entitlement_percent": { "type": "integer" }, "cpu_time_ns": { "type": "integer" },
                    "cpu_avg_percent": { "type": "number" }, "cpu_recent_percent": { "type": "number" },
                    "memory_bytes": { "type": "integer" }, "memory_limit_bytes": { "type": "integer" },
                    "rss_bytes": { "type": "integer" }, "uptime_ms": { "type": "integer" } } }
            }
        },
        "security": [{}, { "bearer": [] }],
        "paths": {
            "/v1/ping": { "get": { "summary": "liveness", "responses": { "200": { "description": "ok" } } } },
            "/v1/host": { "get": { "summary": "capacity, allocation and network of this host", "responses": { "200": { "description": "host view" } } } },
            "/v1/partitions": {
                "get": { "summary": "list partitions", "responses": { "200": { "description": "records",
                    "content": { "application/json": { "schema": { "type": "array", "items": { "$ref": "#/components/schemas/Partition" } } } } } } },
                "post": { "summary": "create (define) a partition", "requestBody": body("CreatePartition"),
                    "responses": { "201": rec.clone(), "400": err.clone(), "409": err.clone(), "507": err.clone() } } },
            "/v1/partitions/{name}": {
                "get": { "summary": "show a partition with its recent events", "parameters": name.clone(), "responses": { "200": rec.clone(), "404": err.clone() } },
                "delete": { "summary": "destroy (force=true kills a running one)", "parameters": [
                    { "name": "name", "in": "path", "required": true, "schema": { "type": "string" } },
                    { "name": "force", "in": "query", "schema": { "type": "boolean" } }],
                    "responses": { "200": { "description": "destroyed" }, "404": err.clone(), "409": err.clone() } } },
            "/v1/partitions/{name}/start": { "post": { "summary": "start; wait=true answers once the agent is ready",
                "parameters": name.clone(), "requestBody": body("StartOptions"), "responses": { "200": rec.clone(), "409": err.clone(), "502": err.clone(), "507": err.clone() } } },
            "/v1/partitions/{name}/stop": { "post": { "summary": "graceful stop (agent, ACPI, then kill after the timeout), or force",
                "parameters": name.clone(), "requestBody": body("StopOptions"), "responses": { "200": rec.clone(), "400": err.clone(), "409": err.clone() } } },
            "/v1/partitions/{name}/restart": { "post": { "summary": "stop then start", "parameters": name.clone(), "requestBody": body("StartOptions"), "responses": { "200": rec.clone() } } },
            "/v1/partitions/{name}/exec": { "post": { "summary": "run a command through the agent", "parameters": name.clone(), "requestBody": body("ExecRequest"),
                "responses": { "200": { "description": "exit code and output", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/ExecResult" } } } }, "409": err.clone() } } },
            "/v1/partitions/{name}/stats": { "get": { "summary": "CPU time vs entitlement, memory, uptime", "parameters": name.clone(),
                "responses": { "200": { "description": "stats", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Stats" } } } } } } },
            "/v1/partitions/{name}/disks": { "post": { "summary": "hot-plug a disk into a running partition created with hot-plug ports",
                "parameters": name.clone(), "requestBody": body("AttachDisk"),
                "responses": { "200": { "description": "attached", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/AttachedDisk" } } } },
                    "400": err.clone(), "404": err.clone(), "409": err.clone(), "502": err.clone() } } },
            "/v1/partitions/{name}/disks/{id}": { "delete": { "summary": "remove a hot-plugged disk; answers once the guest released it",
                "parameters": [
                    { "name": "name", "in": "path", "required": true, "schema": { "type": "string" } },
                    { "name": "id", "in": "path", "required": true, "schema": { "type": "string" } }],
                "responses": { "200": { "description": "removed", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/DetachedDisk" } } } },
                    "404": err.clone(), "409": err.clone(), "502": err.clone() } } },
            "/v1/partitions/{name}/console": { "get": { "summary": "console log tail (lines=N); with `Upgrade: bulkhead-console` attaches to the serial console",
                "parameters": name, "responses": { "200": { "description": "lines" }, "101": { "description": "attached" }, "409": err } } }
        }
    })
}
