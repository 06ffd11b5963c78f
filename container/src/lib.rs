//! kennel-container: environment spec -> Docker objects via bollard; hardening defaults; exec/stats; image build from host files.
