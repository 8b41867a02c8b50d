//! The OpenAPI 3.1 document, generated from the handlers and types.
//! `GET /openapi.json` serves it and `smolvm openapi` prints it; a
//! snapshot test pins it, so any change to the API is a reviewed diff.

use utoipa::Modify;
use utoipa::OpenApi;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};

use crate::api::{events, exec, files, model, sandboxes, system};
use crate::error::{ErrorBody, ErrorCode};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "smolvm",
        description = "Create disposable Linux microVM sandboxes and run commands in them.\n\n\
            Errors have the body `{\"detail\": \"...\", \"code\": \"...\"}` and repeat the code in \
            the `X-SmolVM-Error-Code` header. A command that exits non-zero is not an HTTP error. \
            When the server was started with a token, send `Authorization: Bearer <token>`.",
    ),
    servers((url = "http://127.0.0.1:8000", description = "`smolvm server` with default settings")),
    paths(
        sandboxes::create_sandbox,
        sandboxes::list_sandboxes,
        sandboxes::get_sandbox,
        sandboxes::delete_sandbox,
        sandboxes::stop_sandbox,
        sandboxes::start_sandbox,
        exec::exec_command,
        exec::exec_command_stream,
        files::write_file,
        files::read_file,
        system::get_health,
        system::get_capabilities,
        system::get_diagnostics,
        events::stream_events,
        system::get_metrics,
    ),
    components(schemas(
        ErrorBody,
        ErrorCode,
        model::SandboxStatus,
        exec::ExecStreamOutput,
        exec::ExecStreamExit,
        crate::events::Event,
        crate::events::EventKind,
    )),
    modifiers(&BearerToken),
    security(("bearer" = []), ()),
    tags(
        (name = "sandboxes", description = "Create, run commands in, and delete sandboxes"),
        (name = "files", description = "Move files into and out of sandboxes"),
        (name = "system", description = "Health, capabilities, diagnostics, events and metrics"),
    ),
)]
struct ApiDoc;

/// Adds the bearer token scheme that `security` refers to.
struct BearerToken;

impl Modify for BearerToken {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        let scheme = HttpBuilder::new()
            .scheme(HttpAuthScheme::Bearer)
            .description(Some(
                "Required when the server was started with --token or SMOLVM_API_TOKEN.",
            ))
            .build();
        components.add_security_scheme("bearer", SecurityScheme::Http(scheme));
    }
}

/// Returns the OpenAPI document.
pub fn openapi() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

/// Returns the OpenAPI document as pretty-printed JSON with a final newline.
pub fn openapi_json() -> String {
    let mut json = openapi()
        .to_pretty_json()
        .expect("the OpenAPI document serializes");
    json.push('\n');
    json
}
