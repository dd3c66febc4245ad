//! Protobuf descriptor sets (`protoc --include_imports
//! --descriptor_set_out=FILE`): the gRPC methods a service documents, for
//! the inventory, and the names of their request messages' fields, for
//! locating findings. Read with the maintained prost types.

use std::path::Path;

use tollgate_detect::{ProtoMessage, ProtoMethod, ProtoSchema};

/// The largest descriptor set read: the descriptors of a large API with
/// all its imports are a few MiB; a file past it (or `/dev/zero`) is
/// refused rather than read into memory whole.
pub const MAX_DESCRIPTOR_SET_BYTES: u64 = 16 << 20;

/// Reads a descriptor set. A file that does not decode as one, or declares
/// no service method, is refused: it is not what the user meant.
///
/// # Errors
/// What is wrong with the file, naming it.
pub fn read_descriptor_set(path: &Path) -> Result<ProtoSchema, String> {
    use std::io::Read as _;

    use prost::Message as _;
    let cannot = |e| format!("cannot read {}: {e}", path.display());
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .map_err(cannot)?
        .take(MAX_DESCRIPTOR_SET_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(cannot)?;
    if bytes.len() as u64 > MAX_DESCRIPTOR_SET_BYTES {
        return Err(format!(
            "{}: larger than {} MiB, not a descriptor set of services",
            path.display(),
            MAX_DESCRIPTOR_SET_BYTES >> 20
        ));
    }
    let set = prost_types::FileDescriptorSet::decode(bytes.as_slice()).map_err(|e| {
        format!(
            "{}: not a protobuf descriptor set (protoc --descriptor_set_out): {e}",
            path.display()
        )
    })?;
    let mut schema = ProtoSchema::default();
    for file in &set.file {
        let package = file.package();
        let full = |name: &str| {
            if package.is_empty() {
                name.to_owned()
            } else {
                format!("{package}.{name}")
            }
        };
        for service in &file.service {
            for method in &service.method {
                schema.methods.insert(
                    format!("/{}/{}", full(service.name()), method.name()),
                    ProtoMethod {
                        input: method.input_type().trim_start_matches('.').to_owned(),
                        deprecated: method.options.as_ref().is_some_and(|o| o.deprecated()),
                    },
                );
            }
        }
        for m in &file.message_type {
            add_message(&mut schema, &full(m.name()), m, 0);
        }
    }
    if schema.methods.is_empty() {
        return Err(format!(
            "{}: no gRPC service method in it ({} files): is this a descriptor set \
             (protoc --descriptor_set_out) of the services?",
            path.display(),
            set.file.len()
        ));
    }
    Ok(schema)
}

/// Nested message types deeper than this are not named (a hostile file).
const MAX_NESTING: u32 = 32;

fn add_message(schema: &mut ProtoSchema, full: &str, m: &prost_types::DescriptorProto, depth: u32) {
    if depth > MAX_NESTING {
        return;
    }
    let fields = m
        .field
        .iter()
        .filter_map(|f| {
            let num = u64::try_from(f.number()).ok()?;
            // TYPE_MESSAGE: the field is itself a message of that type.
            let sub = (f.r#type() == prost_types::field_descriptor_proto::Type::Message)
                .then(|| f.type_name().trim_start_matches('.').to_owned());
            Some((num, (f.name().to_owned(), sub)))
        })
        .collect();
    schema.messages.insert(
        full.to_owned(),
        ProtoMessage {
            name: m.name().to_owned(),
            fields,
        },
    );
    for n in &m.nested_type {
        add_message(schema, &format!("{full}.{}", n.name()), n, depth + 1);
    }
}
