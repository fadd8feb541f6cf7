// Command spireapi prints a canonical JSON description of the protobuf
// definitions compiled into spire-api-sdk's Go packages: every file whose path
// starts with "spire/api/" in protoregistry.GlobalFiles. The spiffed test
// tests/test_spire_api_protos.py compares it with our own .proto files.
package main

import (
	"encoding/json"
	"os"
	"strconv"
	"strings"

	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/descriptorpb"

	// Imported for their registration side effects only.
	_ "github.com/spiffe/spire-api-sdk/proto/spire/api/server/agent/v1"
	_ "github.com/spiffe/spire-api-sdk/proto/spire/api/server/bundle/v1"
	_ "github.com/spiffe/spire-api-sdk/proto/spire/api/server/debug/v1"
	_ "github.com/spiffe/spire-api-sdk/proto/spire/api/server/entry/v1"
	_ "github.com/spiffe/spire-api-sdk/proto/spire/api/server/localauthority/v1"
	_ "github.com/spiffe/spire-api-sdk/proto/spire/api/server/logger/v1"
	_ "github.com/spiffe/spire-api-sdk/proto/spire/api/server/svid/v1"
	_ "github.com/spiffe/spire-api-sdk/proto/spire/api/server/trustdomain/v1"
	_ "github.com/spiffe/spire-api-sdk/proto/spire/api/types"
)

type field struct {
	Name           string `json:"name"`
	JSONName       string `json:"json_name"`
	Number         int32  `json:"number"`
	Type           string `json:"type"`
	Label          string `json:"label"`
	TypeName       string `json:"type_name,omitempty"`
	Oneof          string `json:"oneof,omitempty"`
	OneofIndex     *int   `json:"oneof_index,omitempty"`
	Proto3Optional bool   `json:"proto3_optional"`
	Map            bool   `json:"map"`
	Deprecated     bool   `json:"deprecated"`
}

type message struct {
	File     string   `json:"file"`
	MapEntry bool     `json:"map_entry"`
	Fields   []field  `json:"fields"`
	Oneofs   []string `json:"oneofs"`
	Reserved []string `json:"reserved"`
}

type enumValue struct {
	Name   string `json:"name"`
	Number int32  `json:"number"`
}

type enum struct {
	File   string      `json:"file"`
	Values []enumValue `json:"values"`
}

type method struct {
	Name            string `json:"name"`
	Input           string `json:"input"`
	Output          string `json:"output"`
	ClientStreaming bool   `json:"client_streaming"`
	ServerStreaming bool   `json:"server_streaming"`
}

type service struct {
	File    string   `json:"file"`
	Methods []method `json:"methods"`
}

type file struct {
	Package string `json:"package"`
}

type description struct {
	Files    map[string]file    `json:"files"`
	Messages map[string]message `json:"messages"`
	Enums    map[string]enum    `json:"enums"`
	Services map[string]service `json:"services"`
}

func main() {
	d := description{
		Files:    map[string]file{},
		Messages: map[string]message{},
		Enums:    map[string]enum{},
		Services: map[string]service{},
	}
	protoregistry.GlobalFiles.RangeFiles(func(fd protoreflect.FileDescriptor) bool {
		if strings.HasPrefix(fd.Path(), "spire/api/") {
			addFile(&d, fd)
		}
		return true
	})
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", " ")
	if err := enc.Encode(d); err != nil {
		panic(err)
	}
}

func addFile(d *description, fd protoreflect.FileDescriptor) {
	d.Files[fd.Path()] = file{Package: string(fd.Package())}
	addMessages(d, fd.Path(), fd.Messages())
	addEnums(d, fd.Path(), fd.Enums())
	for i := 0; i < fd.Services().Len(); i++ {
		sd := fd.Services().Get(i)
		s := service{File: fd.Path(), Methods: []method{}}
		for j := 0; j < sd.Methods().Len(); j++ {
			md := sd.Methods().Get(j)
			s.Methods = append(s.Methods, method{
				Name:            string(md.Name()),
				Input:           string(md.Input().FullName()),
				Output:          string(md.Output().FullName()),
				ClientStreaming: md.IsStreamingClient(),
				ServerStreaming: md.IsStreamingServer(),
			})
		}
		d.Services[string(sd.FullName())] = s
	}
}

func addEnums(d *description, path string, eds protoreflect.EnumDescriptors) {
	for i := 0; i < eds.Len(); i++ {
		ed := eds.Get(i)
		e := enum{File: path, Values: []enumValue{}}
		for j := 0; j < ed.Values().Len(); j++ {
			v := ed.Values().Get(j)
			e.Values = append(e.Values, enumValue{Name: string(v.Name()), Number: int32(v.Number())})
		}
		d.Enums[string(ed.FullName())] = e
	}
}

func addMessages(d *description, path string, mds protoreflect.MessageDescriptors) {
	for i := 0; i < mds.Len(); i++ {
		md := mds.Get(i)
		m := message{File: path, MapEntry: md.IsMapEntry(), Fields: []field{}, Oneofs: []string{}, Reserved: []string{}}
		for j := 0; j < md.Oneofs().Len(); j++ {
			m.Oneofs = append(m.Oneofs, string(md.Oneofs().Get(j).Name()))
		}
		for j := 0; j < md.ReservedNames().Len(); j++ {
			m.Reserved = append(m.Reserved, string(md.ReservedNames().Get(j)))
		}
		for j := 0; j < md.ReservedRanges().Len(); j++ {
			r := md.ReservedRanges().Get(j)
			m.Reserved = append(m.Reserved, strconv.Itoa(int(r[0]))+"-"+strconv.Itoa(int(r[1])))
		}
		for j := 0; j < md.Fields().Len(); j++ {
			fd := md.Fields().Get(j)
			f := field{
				Name:           string(fd.Name()),
				JSONName:       fd.JSONName(),
				Number:         int32(fd.Number()),
				Type:           fd.Kind().String(),
				Label:          fd.Cardinality().String(),
				Proto3Optional: fd.HasOptionalKeyword() && fd.Syntax() == protoreflect.Proto3,
				Map:            fd.IsMap(),
				Deprecated:     isDeprecated(fd),
			}
			switch fd.Kind() {
			case protoreflect.MessageKind, protoreflect.GroupKind:
				f.TypeName = string(fd.Message().FullName())
			case protoreflect.EnumKind:
				f.TypeName = string(fd.Enum().FullName())
			}
			if od := fd.ContainingOneof(); od != nil {
				f.Oneof = string(od.Name())
				idx := od.Index()
				f.OneofIndex = &idx
			}
			m.Fields = append(m.Fields, f)
		}
		d.Messages[string(md.FullName())] = m
		addMessages(d, path, md.Messages())
		addEnums(d, path, md.Enums())
	}
}

func isDeprecated(fd protoreflect.FieldDescriptor) bool {
	opts, ok := fd.Options().(*descriptorpb.FieldOptions)
	return ok && opts.GetDeprecated()
}
