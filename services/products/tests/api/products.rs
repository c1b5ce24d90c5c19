use contracts::events::v1 as events;
use contracts::products::v1 as pb;
use testkit::{Backend, assert_status, backend_tests, payload};
use tonic::Code;

use crate::helpers::{new_product, spawn_app};

backend_tests!(
    a_created_product_can_be_read_back_and_leaves_one_event,
    invalid_input_is_rejected_naming_the_field,
    an_unknown_product_is_not_found,
    a_batch_returns_found_products_in_request_order_and_lists_the_missing,
    an_update_changes_only_the_fields_set_and_records_the_full_state,
    a_stale_expected_version_is_aborted_and_changes_nothing,
    listing_pages_through_the_catalogue_without_gaps_or_repeats,
);

async fn a_created_product_can_be_read_back_and_leaves_one_event(backend: Backend) {
    let app = spawn_app(backend).await;
    let created = app.create("Blue Mug", 1250).await;
    assert_eq!(created.title, "Blue Mug");
    assert_eq!(created.price_cents, 1250);
    assert_eq!(created.version, 1);

    let fetched = app
        .client
        .clone()
        .get_product(pb::GetProductRequest {
            id: created.id.clone(),
        })
        .await
        .expect("the product is found")
        .into_inner()
        .product;
    assert_eq!(fetched.as_ref(), Some(&created));

    let outbox = app.outbox().await;
    assert_eq!(outbox.len(), 1);
    assert_eq!(outbox[0].aggregate_id, created.id);
    assert_eq!(outbox[0].aggregate_type, "product");
    assert_eq!(outbox[0].producer, "products");
    let event: events::ProductCreated = payload(&outbox[0]);
    assert_eq!(event.title, "Blue Mug");
    assert_eq!(event.image_url, created.image_url);
    assert_eq!(event.price_cents, 1250);
}

async fn invalid_input_is_rejected_naming_the_field(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut client = app.client.clone();
    let with = |title: &str, image_url: &str, price_cents: i64| pb::CreateProductRequest {
        title: title.to_owned(),
        image_url: image_url.to_owned(),
        price_cents,
    };
    let image = "https://img.example.com/a.png";
    for (request, field) in [
        (with("", image, 100), "title"),
        (with(&"t".repeat(201), image, 100), "title"),
        (with("Mug", "", 100), "image_url"),
        (with("Mug", "img.example.com/a.png", 100), "image_url"),
        (with("Mug", "ftp://img.example.com/a.png", 100), "image_url"),
        (with("Mug", image, 0), "price_cents"),
        (with("Mug", image, -100), "price_cents"),
    ] {
        assert_status(
            client.create_product(request).await,
            Code::InvalidArgument,
            field,
        );
    }

    let existing = app.create("Mug", 100).await;
    assert_status(
        client
            .update_product(pb::UpdateProductRequest {
                id: existing.id.clone(),
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
        "at least one of",
    );
    assert_status(
        client
            .update_product(pb::UpdateProductRequest {
                id: existing.id.clone(),
                price_cents: Some(0),
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
        "price_cents",
    );
    assert_status(
        client
            .get_product(pb::GetProductRequest {
                id: "mug".to_owned(),
            })
            .await,
        Code::InvalidArgument,
        "id",
    );
    assert_status(
        client
            .batch_get_products(pb::BatchGetProductsRequest { ids: vec![] })
            .await,
        Code::InvalidArgument,
        "ids",
    );
    assert_status(
        client
            .batch_get_products(pb::BatchGetProductsRequest {
                ids: vec![existing.id.clone(); 1_001],
            })
            .await,
        Code::InvalidArgument,
        "1 to 1000 ids",
    );
    assert_status(
        client
            .batch_get_products(pb::BatchGetProductsRequest {
                ids: vec![existing.id.clone(), "bad".to_owned()],
            })
            .await,
        Code::InvalidArgument,
        "ids[1]",
    );
    assert_status(
        client
            .list_products(pb::ListProductsRequest {
                page_size: 1_001,
                page_token: String::new(),
            })
            .await,
        Code::InvalidArgument,
        "page_size",
    );
    assert_status(
        client
            .list_products(pb::ListProductsRequest {
                page_size: -1,
                page_token: String::new(),
            })
            .await,
        Code::InvalidArgument,
        "page_size",
    );
    assert_status(
        client
            .list_products(pb::ListProductsRequest {
                page_size: 10,
                page_token: "garbage".to_owned(),
            })
            .await,
        Code::InvalidArgument,
        "page_token",
    );
    assert_eq!(
        app.outbox().await.len(),
        1,
        "only the one valid creation recorded an event"
    );
}

async fn an_unknown_product_is_not_found(backend: Backend) {
    let app = spawn_app(backend).await;
    let unknown = uuid::Uuid::now_v7().to_string();
    let mut client = app.client.clone();
    assert_status(
        client
            .get_product(pb::GetProductRequest {
                id: unknown.clone(),
            })
            .await,
        Code::NotFound,
        &unknown,
    );
    assert_status(
        client
            .update_product(pb::UpdateProductRequest {
                id: unknown.clone(),
                title: Some("X".to_owned()),
                ..Default::default()
            })
            .await,
        Code::NotFound,
        &unknown,
    );
}

async fn a_batch_returns_found_products_in_request_order_and_lists_the_missing(backend: Backend) {
    let app = spawn_app(backend).await;
    let first = app.create("First", 100).await;
    let second = app.create("Second", 200).await;
    let missing = uuid::Uuid::now_v7().to_string();

    let response = app
        .client
        .clone()
        .batch_get_products(pb::BatchGetProductsRequest {
            ids: vec![
                second.id.clone(),
                missing.clone(),
                first.id.clone(),
                second.id.clone(),
            ],
        })
        .await
        .expect("the batch is answered")
        .into_inner();
    let titles: Vec<&str> = response
        .products
        .iter()
        .map(|product| product.title.as_str())
        .collect();
    assert_eq!(
        titles,
        ["Second", "First"],
        "request order, each product once"
    );
    assert_eq!(response.not_found_ids, [missing]);

    let full_batch: Vec<String> = (0..1_000)
        .map(|_| uuid::Uuid::now_v7().to_string())
        .collect();
    let response = app
        .client
        .clone()
        .batch_get_products(pb::BatchGetProductsRequest { ids: full_batch })
        .await
        .expect("a batch at the cap is answered")
        .into_inner();
    assert_eq!(response.not_found_ids.len(), 1_000);
}

async fn an_update_changes_only_the_fields_set_and_records_the_full_state(backend: Backend) {
    let app = spawn_app(backend).await;
    let product = app.create("Teapot", 3000).await;

    let updated = app
        .client
        .clone()
        .update_product(pb::UpdateProductRequest {
            id: product.id.clone(),
            price_cents: Some(2500),
            expected_version: Some(1),
            ..Default::default()
        })
        .await
        .expect("the update applies")
        .into_inner()
        .product
        .expect("the product is returned");
    assert_eq!(updated.price_cents, 2500);
    assert_eq!(updated.title, "Teapot");
    assert_eq!(updated.image_url, product.image_url);
    assert_eq!(updated.version, 2);

    // Setting a field to its current value changes nothing.
    let unchanged = app
        .client
        .clone()
        .update_product(pb::UpdateProductRequest {
            id: product.id.clone(),
            price_cents: Some(2500),
            ..Default::default()
        })
        .await
        .expect("a no-op update succeeds")
        .into_inner()
        .product
        .expect("the product is returned");
    assert_eq!(unchanged.version, 2);

    let outbox = app.outbox().await;
    assert_eq!(outbox.len(), 2);
    assert_eq!(outbox[1].aggregate_version, 2);
    let event: events::ProductUpdated = payload(&outbox[1]);
    assert_eq!((event.title.as_str(), event.price_cents), ("Teapot", 2500));
    assert_eq!(event.image_url, product.image_url);
}

async fn a_stale_expected_version_is_aborted_and_changes_nothing(backend: Backend) {
    let app = spawn_app(backend).await;
    let product = app.create("Kettle", 4000).await;
    assert_status(
        app.client
            .clone()
            .update_product(pb::UpdateProductRequest {
                id: product.id.clone(),
                title: Some("Big Kettle".to_owned()),
                expected_version: Some(3),
                ..Default::default()
            })
            .await,
        Code::Aborted,
        "version 1",
    );
    assert_eq!(app.outbox().await.len(), 1);
}

async fn listing_pages_through_the_catalogue_without_gaps_or_repeats(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut created = Vec::new();
    for product_idx in 0..7 {
        let product = app
            .client
            .clone()
            .create_product(new_product(
                &format!("Item {product_idx}"),
                100 + product_idx,
            ))
            .await
            .expect("created")
            .into_inner()
            .product
            .expect("returned");
        created.push(product.id);
    }

    let mut listed = Vec::new();
    let mut token = String::new();
    let mut n_pages = 0;
    loop {
        let page = app
            .client
            .clone()
            .list_products(pb::ListProductsRequest {
                page_size: 3,
                page_token: token,
            })
            .await
            .expect("a page")
            .into_inner();
        n_pages += 1;
        assert!(page.products.len() <= 3);
        listed.extend(page.products.into_iter().map(|product| product.id));
        token = page.next_page_token;
        if token.is_empty() {
            break;
        }
        assert!(n_pages < 10, "pagination must end");
    }
    assert_eq!(n_pages, 3);
    assert_eq!(listed, created, "every product once, oldest first");
}
