-- Kingdom state. Times are microseconds since the Unix epoch, allocated from `clock` inside the
-- write transaction so that they are strictly increasing across all rows and restarts.

CREATE TABLE clock (
    id INTEGER PRIMARY KEY CHECK (id = 0),
    last_micros INTEGER NOT NULL
);
INSERT INTO clock (id, last_micros) VALUES (0, 0);

CREATE TABLE measurements (
    external_computation_id INTEGER PRIMARY KEY CHECK (external_computation_id > 0),
    external_measurement_id INTEGER NOT NULL UNIQUE CHECK (external_measurement_id > 0),
    measurement_consumer_id TEXT NOT NULL,
    -- '' when the request carried no idempotency key.
    request_id TEXT NOT NULL,
    -- halo.v1.Protocol
    protocol INTEGER NOT NULL,
    measurement_spec BLOB NOT NULL,
    -- serialized system Computation.MpcProtocolConfig
    protocol_config BLOB NOT NULL,
    aggregator_duchy_id TEXT NOT NULL,
    -- system Computation.State
    state INTEGER NOT NULL,
    create_time INTEGER NOT NULL,
    update_time INTEGER NOT NULL,
    aggregator_certificate TEXT NOT NULL DEFAULT '',
    encrypted_result BLOB NOT NULL DEFAULT x'',
    result_public_key BLOB NOT NULL DEFAULT x'',
    result_api_version TEXT NOT NULL DEFAULT '',
    failure_message TEXT NOT NULL DEFAULT ''
);
CREATE UNIQUE INDEX measurements_by_request_id
    ON measurements (measurement_consumer_id, request_id) WHERE request_id <> '';
CREATE INDEX measurements_by_update_time
    ON measurements (update_time, external_computation_id);

CREATE TABLE computation_participants (
    external_computation_id INTEGER NOT NULL
        REFERENCES measurements (external_computation_id),
    duchy_id TEXT NOT NULL,
    ordinal INTEGER NOT NULL,
    -- system ComputationParticipant.State
    state INTEGER NOT NULL,
    update_time INTEGER NOT NULL,
    -- serialized ComputationParticipant.RequisitionParams (without the certificate DER)
    requisition_params BLOB,
    -- serialized ComputationParticipant.Failure
    failure BLOB,
    PRIMARY KEY (external_computation_id, duchy_id)
);
CREATE INDEX computation_participants_by_duchy
    ON computation_participants (duchy_id, external_computation_id);

CREATE TABLE requisitions (
    external_requisition_id INTEGER PRIMARY KEY CHECK (external_requisition_id > 0),
    external_computation_id INTEGER NOT NULL
        REFERENCES measurements (external_computation_id),
    data_provider_id TEXT NOT NULL,
    ordinal INTEGER NOT NULL,
    -- system Requisition.State
    state INTEGER NOT NULL,
    requisition_spec_hash BLOB NOT NULL,
    nonce_hash BLOB NOT NULL,
    encrypted_requisition_spec BLOB NOT NULL,
    -- pre-assigned (HMSS) or set on fulfilment (LLv2)
    fulfilling_duchy_id TEXT,
    -- fixed64 nonce, stored bit-for-bit as a signed integer
    nonce INTEGER,
    -- serialized Requisition.FulfillmentContext
    fulfillment_context BLOB,
    update_time INTEGER NOT NULL
);
CREATE INDEX requisitions_by_computation ON requisitions (external_computation_id, ordinal);
CREATE INDEX requisitions_by_data_provider ON requisitions (data_provider_id, state);

CREATE TABLE computation_log_entries (
    external_log_entry_id INTEGER PRIMARY KEY CHECK (external_log_entry_id > 0),
    external_computation_id INTEGER NOT NULL
        REFERENCES measurements (external_computation_id),
    duchy_id TEXT NOT NULL,
    create_time INTEGER NOT NULL,
    -- serialized system ComputationLogEntry (without its name)
    entry BLOB NOT NULL
);
CREATE INDEX computation_log_entries_by_participant
    ON computation_log_entries (external_computation_id, duchy_id);
