//! The CSI identity service: who the plugin is and what it offers.

use meridian_proto::pb::csi::identity_server;
use meridian_proto::pb::csi::plugin_capability::{self, service, volume_expansion};
use meridian_proto::pb::csi::*;
use tonic::{Request, Response, Status};

use super::DRIVER_NAME;

pub struct Identity {
    /// Whether this process serves the controller service too.
    pub controller: bool,
}

#[tonic::async_trait]
impl identity_server::Identity for Identity {
    async fn get_plugin_info(
        &self,
        _: Request<GetPluginInfoRequest>,
    ) -> Result<Response<GetPluginInfoResponse>, Status> {
        Ok(Response::new(GetPluginInfoResponse {
            name: DRIVER_NAME.into(),
            vendor_version: env!("CARGO_PKG_VERSION").into(),
            manifest: Default::default(),
        }))
    }

    async fn get_plugin_capabilities(
        &self,
        _: Request<GetPluginCapabilitiesRequest>,
    ) -> Result<Response<GetPluginCapabilitiesResponse>, Status> {
        let service = |t: service::Type| PluginCapability {
            r#type: Some(plugin_capability::Type::Service(
                plugin_capability::Service { r#type: t as i32 },
            )),
        };
        let mut capabilities = vec![service(service::Type::VolumeAccessibilityConstraints)];
        if self.controller {
            capabilities.push(service(service::Type::ControllerService));
        }
        // A quota grows while the volume is mounted.
        capabilities.push(PluginCapability {
            r#type: Some(plugin_capability::Type::VolumeExpansion(
                plugin_capability::VolumeExpansion {
                    r#type: volume_expansion::Type::Online as i32,
                },
            )),
        });
        Ok(Response::new(GetPluginCapabilitiesResponse {
            capabilities,
        }))
    }

    async fn probe(&self, _: Request<ProbeRequest>) -> Result<Response<ProbeResponse>, Status> {
        Ok(Response::new(ProbeResponse { ready: Some(true) }))
    }
}
