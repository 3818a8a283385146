//! The static pages (`static/`), embedded in the binary so the dashboard works offline and
//! from any working directory. `/` serves the dashboard.

use actix_web::{http::header, web, HttpResponse};

use crate::error::{ApiError, ErrorCode};

/// (path under /static/, content type, bytes). Add a line when adding a file to `static/`.
const FILES: &[(&str, &str, &[u8])] = &[
    (
        "index.html",
        "text/html; charset=utf-8",
        include_bytes!("../../static/index.html"),
    ),
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../static/app.js"),
    ),
    (
        "style.css",
        "text/css; charset=utf-8",
        include_bytes!("../../static/style.css"),
    ),
    (
        "switchyard.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../static/switchyard.js"),
    ),
    (
        "watch.html",
        "text/html; charset=utf-8",
        include_bytes!("../../static/watch.html"),
    ),
];

pub async fn index() -> HttpResponse {
    serve("index.html").unwrap_or_else(|| HttpResponse::NotFound().finish())
}

pub async fn file(name: web::Path<String>) -> Result<HttpResponse, ApiError> {
    serve(&name)
        .ok_or_else(|| ApiError::new(ErrorCode::NotFound, format!("no static file `{name}`")))
}

fn serve(name: &str) -> Option<HttpResponse> {
    let (_, content_type, bytes) = FILES.iter().find(|(n, _, _)| *n == name)?;
    Some(
        HttpResponse::Ok()
            .content_type(*content_type)
            .insert_header((header::CACHE_CONTROL, "no-cache"))
            .body(*bytes),
    )
}
