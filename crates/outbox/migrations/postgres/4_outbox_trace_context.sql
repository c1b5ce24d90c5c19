-- The W3C traceparent of the write that recorded the event (its envelope keeps it too), read
-- by the relay without decoding the envelope, so its publish continues the write's trace.
ALTER TABLE outbox ADD COLUMN traceparent TEXT;
