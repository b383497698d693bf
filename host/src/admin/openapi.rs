//! The OpenAPI 3.0 description of the admin API, served at `/v1/openapi.json`.

use axum::response::IntoResponse;

const DOCUMENT: &str = r##"{
  "openapi": "3.0.3",
  "info": { "title": "Weir admin API", "version": "1" },
  "components": {
    "securitySchemes": { "bearer": { "type": "http", "scheme": "bearer" } },
    "schemas": {
      "Error": { "type": "object", "required": ["error"], "properties": { "error": { "type": "string" } } },
      "Version": {
        "type": "object",
        "properties": {
          "id": { "type": "string", "description": "SHA-256 of the component" },
          "name": { "type": "string" },
          "plugin_name": { "type": "string" },
          "plugin_version": { "type": "string" },
          "windowing": { "type": "array", "items": { "type": "integer" } },
          "state_schema": { "type": "integer" },
          "size": { "type": "integer" },
          "artifact_sha256": { "type": "string" }
        }
      },
      "PipelineStatus": {
        "type": "object",
        "properties": {
          "active": { "type": "string" },
          "previous": { "type": "string", "nullable": true },
          "swaps": { "type": "integer" },
          "rollbacks": { "type": "integer" },
          "swap_pauses_us": { "type": "array", "items": { "type": "integer" } },
          "last_error": { "type": "string", "nullable": true },
          "state_schema": { "type": "integer", "nullable": true },
          "history": { "type": "array", "items": { "type": "object", "properties": {
            "from": { "type": "string" }, "to": { "type": "string" }, "pause_us": { "type": "integer" },
            "rolled_back": { "type": "string", "nullable": true },
            "state": { "type": "string", "nullable": true, "description": "what happened to the stored windows: migrated or reset" } } } },
          "records_in": { "type": "integer" },
          "dead_letters": { "type": "integer" },
          "plugin_failures": { "type": "integer" }
        }
      }
    }
  },
  "paths": {
    "/v1/openapi.json": { "get": { "summary": "This document", "responses": { "200": { "description": "OpenAPI document" } } } },
    "/v1/metrics": { "get": { "summary": "OpenMetrics text: every pipeline's counters labelled pipeline=<name>, and the host's upload counters", "responses": { "200": { "description": "application/openmetrics-text" } } } },
    "/v1/plugins": {
      "get": { "summary": "Every stored plugin version", "responses": { "200": { "description": "versions",
        "content": { "application/json": { "schema": { "type": "array", "items": { "$ref": "#/components/schemas/Version" } } } } } } }
    },
    "/v1/plugins/{name}": {
      "post": {
        "summary": "Upload a component (the raw .wasm bytes) under a name; validated before it is stored",
        "security": [{ "bearer": [] }],
        "parameters": [{ "name": "name", "in": "path", "required": true, "schema": { "type": "string" } }],
        "requestBody": { "required": true, "content": { "application/wasm": { "schema": { "type": "string", "format": "binary" } } } },
        "responses": {
          "201": { "description": "stored", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Version" } } } },
          "401": { "description": "no token", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } } },
          "403": { "description": "wrong token", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } } },
          "413": { "description": "too large", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } } },
          "422": { "description": "refused: not a component, wrong world or version, missing export, compile failure", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } } }
        }
      }
    },
    "/v1/pipelines": {
      "get": { "summary": "Pipeline names", "responses": { "200": { "description": "names" } } },
      "post": {
        "summary": "Create and start a pipeline (weir serve only); it is saved and starts again with the host",
        "security": [{ "bearer": [] }],
        "requestBody": { "required": true, "content": { "application/json": { "schema": { "type": "object", "required": ["version", "pipeline"], "properties": {
          "version": { "type": "string", "description": "stored plugin version id, or a prefix of at least 8 characters" },
          "pipeline": { "type": "object", "description": "the keys of a [[pipeline]] table of the host config, without plugin; limits it leaves out come from the host's [limits]" } } } } } },
        "responses": { "201": { "description": "created and started" }, "404": { "description": "unknown version" },
                       "405": { "description": "the host is a single `weir run` pipeline" }, "409": { "description": "a pipeline of that name is running" },
                       "422": { "description": "invalid settings, or the pipeline could not start (e.g. its input topic does not exist)" } }
      }
    },
    "/v1/pipelines/{name}": {
      "get": { "summary": "Active version, swaps, rollbacks, errors",
        "parameters": [{ "name": "name", "in": "path", "required": true, "schema": { "type": "string" } }],
        "responses": { "200": { "description": "status", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/PipelineStatus" } } } },
                       "404": { "description": "no such pipeline" } } },
      "delete": { "summary": "Stop a pipeline (it commits what it processed first) and remove it from the host",
        "security": [{ "bearer": [] }],
        "parameters": [{ "name": "name", "in": "path", "required": true, "schema": { "type": "string" } }],
        "responses": { "200": { "description": "stopped; `failed` holds the error it had stopped with, if any; `in_config` (with a `note`) when the pipeline comes from the host config file and will start again with the host" }, "404": { "description": "no such pipeline" },
                       "405": { "description": "the host is a single `weir run` pipeline" } } }
    },
    "/v1/pipelines/{name}/topology": {
      "get": { "summary": "The active version's topology: sub-topologies and their nodes, wasm segments, stores, internal topics",
        "parameters": [{ "name": "name", "in": "path", "required": true, "schema": { "type": "string" } }],
        "responses": { "200": { "description": "as `weir describe --json` prints it" }, "404": { "description": "no such pipeline" } } }
    },
    "/v1/pipelines/{name}/activate": {
      "post": {
        "summary": "Stage a stored version; it takes over at the next transaction boundary",
        "security": [{ "bearer": [] }],
        "parameters": [{ "name": "name", "in": "path", "required": true, "schema": { "type": "string" } }],
        "requestBody": { "required": true, "content": { "application/json": { "schema": { "type": "object", "required": ["version"], "properties": {
          "version": { "type": "string", "description": "version id, or a prefix of at least 8 characters" },
          "reset_state": { "type": "boolean", "default": false, "description": "drop the stored windows instead of migrating them (needed for a state schema the version cannot migrate from)" } } } } } },
        "responses": { "202": { "description": "staged" }, "404": { "description": "unknown version or pipeline" }, "409": { "description": "incompatible windows, or a state schema the version cannot migrate from (see reset_state)" } }
      }
    },
    "/v1/pipelines/{name}/rollback": {
      "post": {
        "summary": "Return to the previous version at the next transaction boundary",
        "security": [{ "bearer": [] }],
        "parameters": [{ "name": "name", "in": "path", "required": true, "schema": { "type": "string" } }],
        "requestBody": { "required": false, "content": { "application/json": { "schema": { "type": "object", "properties": {
          "reset_state": { "type": "boolean", "default": false } } } } } },
        "responses": { "202": { "description": "staged" }, "409": { "description": "no previous version, or it cannot read the current state schema (see reset_state)" } }
      }
    }
  }
}"##;

pub(super) async fn document() -> impl IntoResponse {
    ([(axum::http::header::CONTENT_TYPE, "application/json")], DOCUMENT)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_document_is_valid_json_and_lists_every_route() {
        let doc: serde_json::Value = serde_json::from_str(super::DOCUMENT).unwrap();
        for path in
            ["/v1/plugins/{name}", "/v1/pipelines/{name}/activate", "/v1/pipelines/{name}/rollback", "/v1/metrics"]
        {
            assert!(doc["paths"].get(path).is_some(), "{path} missing");
        }
        assert!(doc["paths"]["/v1/pipelines"]["post"].is_object());
        assert!(doc["paths"]["/v1/pipelines/{name}"]["delete"].is_object());
        assert!(doc["paths"]["/v1/pipelines/{name}/topology"]["get"].is_object());
    }
}
