"""Results for the RIS and the EHR (issue 28): the HL7 v2 ORU^R01 of a result (``oru``) and
its FHIR transaction Bundle (``fhir``)."""
