"""The router's own DICOM upper layer on asyncio: PDU framing, DIMSE command sets and the
association requestor used for delivery (pynetdicom's PDU classes encode and decode the
A-ASSOCIATE PDUs; the I/O loop, the P-DATA path and the DIMSE messages are ours)."""
