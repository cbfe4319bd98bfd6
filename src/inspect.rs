//! The pages people look at, in English and Brazilian Portuguese: the agent [`inspector`]
//! (`127.0.0.1:4040`: the tunnel's state, recent requests and their replay, metrics), fed by
//! the [`capture`] wrapped around the agent's origins; and the relay [`console`]
//! (`/_ponte/console/`: tunnels, agents, deliveries, replay). Shared by the pages: the catalogues
//! ([`i18n`]), the security headers, cookies and forms ([`web`]), and how bodies are shown
//! ([`body_view`]).

pub mod body_view;
pub mod capture;
pub mod console;
pub mod i18n;
pub mod inspector;
pub mod metrics;
pub mod page;
pub mod web;
