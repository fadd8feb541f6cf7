"""Node-attestation wire formats shared by the server and agent halves of each attestor."""
