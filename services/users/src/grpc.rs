//! The gRPC edge: the only module that touches prost types. Requests are parsed into domain
//! values here (invalid ones never reach the store) and results converted back.

use contracts::users::v1 as pb;
use contracts::users::v1::user_service_server::UserService;
use platform::fields::parse_id;
use tonic::{Request, Response, Status};

use crate::domain::{Deletion, Email, NewUser, Rename, User, UserName};
use crate::error::UsersError;
use crate::store::UserStore;

#[derive(Debug, Clone)]
pub struct UserApi {
    store: UserStore,
}

impl UserApi {
    pub fn new(store: UserStore) -> Self {
        Self { store }
    }
}

#[tonic::async_trait]
impl UserService for UserApi {
    #[tracing::instrument(skip_all)]
    async fn create_user(
        &self,
        request: Request<pb::CreateUserRequest>,
    ) -> Result<Response<pb::CreateUserResponse>, Status> {
        let new = NewUser::try_from(request.into_inner())?;
        let user = self.store.create(&new).await?;
        tracing::info!(user_id = %user.id, "user registered");
        Ok(Response::new(pb::CreateUserResponse {
            user: Some(user.into()),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn get_user(
        &self,
        request: Request<pb::GetUserRequest>,
    ) -> Result<Response<pb::GetUserResponse>, Status> {
        let id = parse_id("id", &request.get_ref().id).map_err(UsersError::from)?;
        let user = self.store.get(id).await?;
        Ok(Response::new(pb::GetUserResponse {
            user: Some(user.into()),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn update_user(
        &self,
        request: Request<pb::UpdateUserRequest>,
    ) -> Result<Response<pb::UpdateUserResponse>, Status> {
        let rename = Rename::try_from(request.into_inner())?;
        let user = self.store.rename(&rename).await?;
        Ok(Response::new(pb::UpdateUserResponse {
            user: Some(user.into()),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn delete_user(
        &self,
        request: Request<pb::DeleteUserRequest>,
    ) -> Result<Response<pb::DeleteUserResponse>, Status> {
        let request = request.into_inner();
        let deletion = Deletion {
            id: parse_id("id", &request.id).map_err(UsersError::from)?,
            expected_version: request.expected_version,
        };
        let version = self.store.delete(&deletion).await?;
        tracing::info!(user_id = %deletion.id, "user deleted");
        Ok(Response::new(pb::DeleteUserResponse { version }))
    }
}

impl TryFrom<pb::CreateUserRequest> for NewUser {
    type Error = UsersError;

    fn try_from(request: pb::CreateUserRequest) -> Result<Self, Self::Error> {
        Ok(Self {
            email: Email::parse("email", &request.email)?,
            name: UserName::parse("name", &request.name)?,
        })
    }
}

impl TryFrom<pb::UpdateUserRequest> for Rename {
    type Error = UsersError;

    fn try_from(request: pb::UpdateUserRequest) -> Result<Self, Self::Error> {
        Ok(Self {
            id: parse_id("id", &request.id)?,
            name: UserName::parse("name", &request.name)?,
            expected_version: request.expected_version,
        })
    }
}

impl From<User> for pb::User {
    fn from(user: User) -> Self {
        Self {
            id: user.id.to_string(),
            email: user.email,
            name: user.name,
            version: user.version,
            created_at: Some(platform::time::to_timestamp(user.created_at)),
            updated_at: Some(platform::time::to_timestamp(user.updated_at)),
        }
    }
}
