//! The gRPC edge: the only module that touches prost types. Requests are parsed into domain
//! values here (invalid ones never reach the store) and results converted back.

use contracts::products::v1 as pb;
use contracts::products::v1::product_service_server::ProductService;
use platform::fields::{FieldViolation, parse_id};
use platform::paging::{Cursor, page_size};
use tonic::{Request, Response, Status};

use crate::domain::{
    ImageUrl, MAX_BATCH_IDS, NewProduct, PriceCents, Product, ProductChange, Title, dedupe_ids,
};
use crate::error::ProductsError;
use crate::store::ProductStore;

#[derive(Debug, Clone)]
pub struct ProductApi {
    store: ProductStore,
}

impl ProductApi {
    pub fn new(store: ProductStore) -> Self {
        Self { store }
    }
}

#[tonic::async_trait]
impl ProductService for ProductApi {
    #[tracing::instrument(skip_all)]
    async fn create_product(
        &self,
        request: Request<pb::CreateProductRequest>,
    ) -> Result<Response<pb::CreateProductResponse>, Status> {
        let new = NewProduct::try_from(request.into_inner())?;
        let product = self.store.create(new).await?;
        tracing::info!(product_id = %product.id, "product created");
        Ok(Response::new(pb::CreateProductResponse {
            product: Some(product.into()),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn get_product(
        &self,
        request: Request<pb::GetProductRequest>,
    ) -> Result<Response<pb::GetProductResponse>, Status> {
        let id = parse_id("id", &request.get_ref().id).map_err(ProductsError::from)?;
        let product = self.store.get(id).await?;
        Ok(Response::new(pb::GetProductResponse {
            product: Some(product.into()),
        }))
    }

    #[tracing::instrument(skip_all, fields(n_ids = request.get_ref().ids.len()))]
    async fn batch_get_products(
        &self,
        request: Request<pb::BatchGetProductsRequest>,
    ) -> Result<Response<pb::BatchGetProductsResponse>, Status> {
        let raw_ids = &request.get_ref().ids;
        if raw_ids.is_empty() || raw_ids.len() > MAX_BATCH_IDS {
            return Err(ProductsError::from(FieldViolation::new(
                "ids",
                format!("must hold 1 to {MAX_BATCH_IDS} ids, got {}", raw_ids.len()),
            ))
            .into());
        }
        let ids = raw_ids
            .iter()
            .enumerate()
            .map(|(id_idx, raw)| parse_id(&format!("ids[{id_idx}]"), raw))
            .collect::<Result<Vec<_>, _>>()
            .map_err(ProductsError::from)?;
        let (products, missing) = self.store.batch_get(&dedupe_ids(ids)).await?;
        Ok(Response::new(pb::BatchGetProductsResponse {
            products: products.into_iter().map(Into::into).collect(),
            not_found_ids: missing.iter().map(ToString::to_string).collect(),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn update_product(
        &self,
        request: Request<pb::UpdateProductRequest>,
    ) -> Result<Response<pb::UpdateProductResponse>, Status> {
        let change = ProductChange::try_from(request.into_inner())?;
        let product = self.store.update(&change).await?;
        Ok(Response::new(pb::UpdateProductResponse {
            product: Some(product.into()),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn list_products(
        &self,
        request: Request<pb::ListProductsRequest>,
    ) -> Result<Response<pb::ListProductsResponse>, Status> {
        let request = request.into_inner();
        let size = page_size("page_size", request.page_size).map_err(ProductsError::from)?;
        let after =
            Cursor::decode("page_token", &request.page_token).map_err(ProductsError::from)?;
        let page = self.store.list(after, size).await?;
        Ok(Response::new(pb::ListProductsResponse {
            products: page.products.into_iter().map(Into::into).collect(),
            next_page_token: page.next.map(|cursor| cursor.encode()).unwrap_or_default(),
        }))
    }
}

impl TryFrom<pb::CreateProductRequest> for NewProduct {
    type Error = ProductsError;

    fn try_from(request: pb::CreateProductRequest) -> Result<Self, Self::Error> {
        Ok(Self {
            title: Title::parse("title", &request.title)?,
            image_url: ImageUrl::parse("image_url", &request.image_url)?,
            price_cents: PriceCents::parse("price_cents", request.price_cents)?,
        })
    }
}

impl TryFrom<pb::UpdateProductRequest> for ProductChange {
    type Error = ProductsError;

    fn try_from(request: pb::UpdateProductRequest) -> Result<Self, Self::Error> {
        let change = Self {
            id: parse_id("id", &request.id)?,
            title: request
                .title
                .as_deref()
                .map(|raw| Title::parse("title", raw))
                .transpose()?,
            image_url: request
                .image_url
                .as_deref()
                .map(|raw| ImageUrl::parse("image_url", raw))
                .transpose()?,
            price_cents: request
                .price_cents
                .map(|raw| PriceCents::parse("price_cents", raw))
                .transpose()?,
            expected_version: request.expected_version,
        };
        if change.title.is_none() && change.image_url.is_none() && change.price_cents.is_none() {
            return Err(FieldViolation::new(
                "title",
                "an update must set at least one of title, image_url and price_cents",
            )
            .into());
        }
        Ok(change)
    }
}

impl From<Product> for pb::Product {
    fn from(product: Product) -> Self {
        Self {
            id: product.id.to_string(),
            title: product.title,
            image_url: product.image_url,
            price_cents: product.price_cents,
            version: product.version,
            created_at: Some(platform::time::to_timestamp(product.created_at)),
            updated_at: Some(platform::time::to_timestamp(product.updated_at)),
        }
    }
}

#[cfg(test)]
mod tests {
    use prost::Message as _;

    use super::*;
    use crate::domain::{MAX_IMAGE_URL_BYTES, MAX_TITLE_CHARS};

    /// The largest product the service accepts: a title of four-byte characters and the
    /// longest URL.
    pub(crate) fn largest() -> Product {
        let title = Title::parse("title", &"\u{1D538}".repeat(MAX_TITLE_CHARS)).expect("a title");
        let prefix = "https://img.example.com/";
        let url = format!("{prefix}{}", "a".repeat(MAX_IMAGE_URL_BYTES - prefix.len()));
        let image_url = ImageUrl::parse("image_url", &url).expect("a URL");
        Product {
            id: uuid::Uuid::now_v7(),
            title: title.into_inner(),
            image_url: image_url.into_inner(),
            price_cents: i64::MAX,
            version: u64::MAX,
            created_at: i64::MAX,
            updated_at: i64::MAX,
        }
    }

    #[test]
    fn the_largest_page_of_products_fits_what_a_client_decodes_by_default() {
        let page = pb::ListProductsResponse {
            products: (0..platform::paging::MAX_PAGE_SIZE)
                .map(|_| largest().into())
                .collect(),
            next_page_token: "x".repeat(200),
        };
        let bytes = page.encoded_len();
        assert!(
            bytes < 4 * 1024 * 1024,
            "{bytes} bytes: a client with the default 4 MiB limit could not read it"
        );
    }

    #[test]
    fn a_url_of_multibyte_characters_is_bounded_in_bytes() {
        let url = format!("https://img.example.com/{}", "\u{1D538}".repeat(600));
        let refused = ImageUrl::parse("image_url", &url).expect_err("too many bytes");
        assert!(refused.reason.contains("bytes"), "{refused}");
    }
}
