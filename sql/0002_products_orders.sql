-- 0002_products_orders: the catalogue and the orders that consume its stock.
-- stock can never go negative (CHECK), so even a buggy code path cannot oversell.
CREATE TABLE products (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    sku          text        NOT NULL UNIQUE CHECK (length(sku) BETWEEN 1 AND 64),
    name         text        NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    price_cents  bigint      NOT NULL CHECK (price_cents >= 0),
    -- squawk-ignore prefer-bigint-over-int -- why: a count of items on a shelf, nowhere near 2^31
    stock        integer     NOT NULL CHECK (stock >= 0),
    created_at   timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE orders (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id      bigint      NOT NULL REFERENCES users (id),
    total_cents  bigint      NOT NULL CHECK (total_cents >= 0),
    created_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX orders_user_id_idx ON orders (user_id, id);

CREATE TABLE order_items (
    order_id          bigint  NOT NULL REFERENCES orders (id),
    product_id        bigint  NOT NULL REFERENCES products (id),
    -- squawk-ignore prefer-bigint-over-int -- why: items of one product in one order, nowhere near 2^31
    quantity          integer NOT NULL CHECK (quantity > 0),
    unit_price_cents  bigint  NOT NULL CHECK (unit_price_cents >= 0),
    PRIMARY KEY (order_id, product_id)
);
